# Locate the TensorRT C++ headers (NvInfer.h and friends) for the plugin library. Unless
# TQ_TRT_INCLUDE_DIR (CMake cache variable or environment variable) names an include dir, the headers
# are taken from the PyPI wheel kernel-lens (it carries the TensorRT 10.14.1 headers; only its
# include/tensorrt/ folder is extracted), downloaded once with `python -m pip download --no-deps` and
# cached in ${XDG_CACHE_HOME:-~/.cache}/tq-ort/trt-headers/kernel-lens-<version>/.
# Sets TQ_TRT_HEADERS_DIR, or leaves it empty (with a warning) when the headers cannot be had: the
# TensorRT plugins are optional, the rest of the build goes on.
include("${CMAKE_CURRENT_LIST_DIR}/HeaderCache.cmake")

set(TQ_TRT_HEADERS_PIP_PACKAGE "kernel-lens" CACHE STRING "PyPI package that carries the TensorRT headers")
set(TQ_TRT_HEADERS_PIP_VERSION "2.0.1" CACHE STRING "its version (2.0.1 = TensorRT 10.14.1 headers)")
set(TQ_TRT_INCLUDE_DIR "" CACHE PATH "TensorRT include dir (NvInfer.h); empty = fetch from PyPI")
set(TQ_TRT_HEADERS_DIR "")

set(_tq_trt_wheel_dir "kernel_lens/include/tensorrt")

function(_tq_fetch_trt_headers out_dir result)
  set(${result} FALSE PARENT_SCOPE)
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(NOT Python3_EXECUTABLE)
    message(WARNING "tq-ort: no Python interpreter to run pip: TensorRT headers not fetched")
    return()
  endif()
  set(work "${CMAKE_BINARY_DIR}/trt-pip")
  file(REMOVE_RECURSE "${work}")
  file(MAKE_DIRECTORY "${work}")
  message(STATUS "tq-ort: pip download ${TQ_TRT_HEADERS_PIP_PACKAGE}==${TQ_TRT_HEADERS_PIP_VERSION} (TensorRT headers)")
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -m pip download --no-deps --disable-pip-version-check -q
            "${TQ_TRT_HEADERS_PIP_PACKAGE}==${TQ_TRT_HEADERS_PIP_VERSION}" -d "${work}"
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  file(GLOB wheels "${work}/*.whl")
  if(NOT rc EQUAL 0 OR NOT wheels)
    message(WARNING "tq-ort: 'pip download ${TQ_TRT_HEADERS_PIP_PACKAGE}==${TQ_TRT_HEADERS_PIP_VERSION}' failed "
      "(${rc}): ${err}\nThe TensorRT plugins are skipped; set TQ_TRT_INCLUDE_DIR to a TensorRT include dir to build them.")
    return()
  endif()
  list(GET wheels 0 wheel)
  file(ARCHIVE_EXTRACT INPUT "${wheel}" DESTINATION "${work}/x" PATTERNS "${_tq_trt_wheel_dir}/*.h")
  file(GLOB headers "${work}/x/${_tq_trt_wheel_dir}/*.h")
  if(NOT headers)
    message(WARNING "tq-ort: no headers under ${_tq_trt_wheel_dir} in ${wheel}: TensorRT plugins skipped")
    return()
  endif()
  tq_install_headers("${out_dir}" "${work}" ${headers})
  set(${result} TRUE PARENT_SCOPE)
endfunction()

tq_cache_var_from_env(TQ_TRT_INCLUDE_DIR)
if(NOT TQ_TRT_INCLUDE_DIR)
  tq_header_cache_dir(_tq_dir "trt-headers/${TQ_TRT_HEADERS_PIP_PACKAGE}-${TQ_TRT_HEADERS_PIP_VERSION}")
  if(NOT EXISTS "${_tq_dir}/NvInfer.h")
    _tq_fetch_trt_headers("${_tq_dir}" _tq_ok)
  endif()
  set(_tq_trt_inc "${_tq_dir}")
else()
  set(_tq_trt_inc "${TQ_TRT_INCLUDE_DIR}")
endif()
if(EXISTS "${_tq_trt_inc}/NvInfer.h")
  set(TQ_TRT_HEADERS_DIR "${_tq_trt_inc}")
  message(STATUS "tq-ort: TensorRT headers: ${_tq_trt_inc}")
elseif(TQ_TRT_INCLUDE_DIR)
  message(FATAL_ERROR "tq-ort: ${TQ_TRT_INCLUDE_DIR}/NvInfer.h not found (TQ_TRT_INCLUDE_DIR)")
endif()
