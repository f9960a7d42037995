# libtq_trt_plugins.so: the TensorRT IPluginV3 plugins (custom_ops/trt/) over the CUDA kernels
# (the tq_cuda_kernels OBJECT library of CMakeLists.txt). Built when CUDA is on and the TensorRT headers
# are found (cmake/TrtHeaders.cmake); -DTQ_WITH_TRT=OFF skips it. It links neither libnvinfer nor
# libtensorrt_rtx (the plugins only call virtual functions of objects TensorRT hands them) and uses the
# static cudart, so it loads with ctypes on a machine without a GPU or TensorRT.
option(TQ_WITH_TRT "Build the TensorRT plugin library (needs CUDA and the TensorRT headers)" ON)
if(NOT TQ_WITH_TRT)
  message(STATUS "tq-ort: TensorRT plugins off (TQ_WITH_TRT=OFF)")
  return()
endif()
if(NOT TQ_CUDA OR NOT TARGET tq_cuda_kernels)
  message(STATUS "tq-ort: TensorRT plugins off (they need the CUDA kernels: CUDA is off)")
  return()
endif()
include(cmake/TrtHeaders.cmake)
if(NOT TQ_TRT_HEADERS_DIR)
  message(STATUS "tq-ort: TensorRT plugins off (no TensorRT headers)")
  return()
endif()

file(GLOB_RECURSE TQ_TRT_SOURCES CONFIGURE_DEPENDS "${CMAKE_SOURCE_DIR}/custom_ops/trt/*.cc")
add_library(tq_trt_plugins SHARED ${TQ_TRT_SOURCES})
target_include_directories(tq_trt_plugins PRIVATE "${CMAKE_SOURCE_DIR}/custom_ops")
# -isystem: the TensorRT headers' own deprecation warnings are not ours.
target_include_directories(tq_trt_plugins SYSTEM PRIVATE "${TQ_TRT_HEADERS_DIR}" ${CUDAToolkit_INCLUDE_DIRS})
set_target_properties(tq_trt_plugins PROPERTIES
  CXX_VISIBILITY_PRESET hidden CUDA_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON
  OUTPUT_NAME tq_trt_plugins)
target_compile_options(tq_trt_plugins PRIVATE -O2 -Wall -Wextra -Wno-unused-parameter -Wno-deprecated-declarations)
target_link_libraries(tq_trt_plugins PRIVATE tq_cuda_kernels CUDA::cudart_static)
# No undefined symbols: a stray call into libnvinfer / libtensorrt_rtx fails the link, not the load.
target_link_options(tq_trt_plugins PRIVATE -Wl,--no-undefined -Wl,-z,defs)
install(TARGETS tq_trt_plugins LIBRARY DESTINATION tq_ort RUNTIME DESTINATION tq_ort)
message(STATUS "tq-ort: TensorRT plugins on (libtq_trt_plugins, headers ${TQ_TRT_HEADERS_DIR})")
