# Locate the ONNX Runtime C/C++ headers. The ORT wheels ship none, so unless TQ_ORT_INCLUDE_DIR
# (CMake cache variable or environment variable) names an include dir, the headers are taken from
# the npm package of asus4's Unity ORT plugin (only its header folder is extracted) and cached in
# ${XDG_CACHE_HOME:-~/.cache}/tq-ort/ort-headers/<package>-<version>/ for later builds.
include("${CMAKE_CURRENT_LIST_DIR}/HeaderCache.cmake")

set(TQ_ORT_NPM_PACKAGE "com.github.asus4.onnxruntime" CACHE STRING "npm package that carries the ORT headers")
set(TQ_ORT_NPM_VERSION "0.4.9" CACHE STRING "its version (0.4.9 = ORT 1.29 headers, ORT_API_VERSION 29)")
set(TQ_ORT_INCLUDE_DIR "" CACHE PATH "ONNX Runtime include dir (onnxruntime_cxx_api.h); empty = fetch with npm")

set(_tq_npm_header_dir "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers")

function(_tq_fetch_ort_headers out_dir)
  find_program(TQ_NPM npm)
  if(NOT TQ_NPM)
    message(FATAL_ERROR "tq-ort: ONNX Runtime headers not found and npm is not installed. "
      "Install npm, or set TQ_ORT_INCLUDE_DIR (env or -D) to a dir with onnxruntime_cxx_api.h.")
  endif()
  set(work "${CMAKE_BINARY_DIR}/ort-npm")
  file(REMOVE_RECURSE "${work}")
  file(MAKE_DIRECTORY "${work}")
  message(STATUS "tq-ort: npm pack ${TQ_ORT_NPM_PACKAGE}@${TQ_ORT_NPM_VERSION} (ORT headers)")
  # A private npm cache in the build dir keeps the ~150 MB tarball out of ~/.npm.
  execute_process(
    COMMAND "${TQ_NPM}" pack "${TQ_ORT_NPM_PACKAGE}@${TQ_ORT_NPM_VERSION}" --silent --cache "${work}/npm-cache"
    WORKING_DIRECTORY "${work}" RESULT_VARIABLE rc OUTPUT_VARIABLE tgz ERROR_VARIABLE err
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  string(REGEX REPLACE ".*\n" "" tgz "${tgz}")  # npm prints the tarball name last
  if(NOT rc EQUAL 0 OR NOT EXISTS "${work}/${tgz}")
    message(FATAL_ERROR "tq-ort: 'npm pack ${TQ_ORT_NPM_PACKAGE}@${TQ_ORT_NPM_VERSION}' failed (${rc}): ${err}\n"
      "Set TQ_ORT_INCLUDE_DIR to an ONNX Runtime include dir to build offline.")
  endif()
  file(ARCHIVE_EXTRACT INPUT "${work}/${tgz}" DESTINATION "${work}/x" PATTERNS "${_tq_npm_header_dir}/*.h")
  file(GLOB headers "${work}/x/${_tq_npm_header_dir}/*.h")
  if(NOT headers)
    message(FATAL_ERROR "tq-ort: no headers under ${_tq_npm_header_dir} in ${tgz}")
  endif()
  tq_install_headers("${out_dir}" "${work}" ${headers})
endfunction()

tq_cache_var_from_env(TQ_ORT_INCLUDE_DIR)
if(NOT TQ_ORT_INCLUDE_DIR)
  tq_header_cache_dir(_tq_dir "ort-headers/${TQ_ORT_NPM_PACKAGE}-${TQ_ORT_NPM_VERSION}")
  if(NOT EXISTS "${_tq_dir}/onnxruntime_cxx_api.h")
    _tq_fetch_ort_headers("${_tq_dir}")
  endif()
  set(_tq_ort_inc "${_tq_dir}")
else()
  set(_tq_ort_inc "${TQ_ORT_INCLUDE_DIR}")
endif()
if(NOT EXISTS "${_tq_ort_inc}/onnxruntime_cxx_api.h")
  message(FATAL_ERROR "tq-ort: ${_tq_ort_inc}/onnxruntime_cxx_api.h not found (TQ_ORT_INCLUDE_DIR)")
endif()
message(STATUS "tq-ort: ONNX Runtime headers: ${_tq_ort_inc}")
set(TQ_ORT_HEADERS_DIR "${_tq_ort_inc}")
