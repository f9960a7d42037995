# What OrtHeaders.cmake and TrtHeaders.cmake share: the per-user header cache and its atomic fill.
include_guard(GLOBAL)

# <var> = ${XDG_CACHE_HOME:-~/.cache}/tq-ort/<subdir>
function(tq_header_cache_dir var subdir)
  if(DEFINED ENV{XDG_CACHE_HOME} AND NOT "$ENV{XDG_CACHE_HOME}" STREQUAL "")
    set(root "$ENV{XDG_CACHE_HOME}")
  else()
    set(root "$ENV{HOME}/.cache")
  endif()
  set(${var} "${root}/tq-ort/${subdir}" PARENT_SCOPE)
endfunction()

# The cache variable <var> takes the environment variable of the same name when it is empty.
macro(tq_cache_var_from_env var)
  if(NOT ${var} AND DEFINED ENV{${var}} AND NOT "$ENV{${var}}" STREQUAL "")
    set(${var} "$ENV{${var}}" CACHE PATH "" FORCE)
  endif()
endmacro()

# Copies <headers...> into <out_dir> through a temp dir and a rename, so concurrent builds never
# see a half-written cache; removes <work_dir> afterwards.
function(tq_install_headers out_dir work_dir)
  file(REMOVE_RECURSE "${out_dir}.tmp")
  file(MAKE_DIRECTORY "${out_dir}.tmp")
  file(COPY ${ARGN} DESTINATION "${out_dir}.tmp")
  file(RENAME "${out_dir}.tmp" "${out_dir}" RESULT rename_rc)  # a concurrent build may have won: fine
  file(REMOVE_RECURSE "${work_dir}" "${out_dir}.tmp")
endfunction()
