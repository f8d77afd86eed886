# The install test (CTest runs it with cmake -P): installs BUILD_DIR into a fresh PREFIX, checks the layout,
# builds install_check.c with the flags pkg-config gives and runs it with a bare environment. Writes JUNIT
# (one test case) either way.
foreach(variable BUILD_DIR PREFIX SOURCE_DIR CC PKG_CONFIG MODE VERSION ABI JUNIT)
  if(NOT DEFINED ${variable})
    message(FATAL_ERROR "install_check.cmake needs -D${variable}=...")
  endif()
endforeach()

set(case_name "install_pkg_config_${MODE}")
function(finish failure)
  if(failure)
    string(REPLACE "&" "&amp;" escaped "${failure}")
    string(REPLACE "<" "&lt;" escaped "${escaped}")
    string(REPLACE "\"" "&quot;" escaped "${escaped}")
    set(body "><failure message=\"${escaped}\"/></testcase>")
  else()
    set(body "/>")
  endif()
  if(failure)
    set(failures 1)
  else()
    set(failures 0)
  endif()
  file(WRITE "${JUNIT}" "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<testsuite name=\"install\" tests=\"1\" failures=\"${failures}\" errors=\"0\" skipped=\"0\">\n"
    "  <testcase classname=\"install\" name=\"${case_name}\"${body}\n</testsuite>\n")
  if(failure)
    message(FATAL_ERROR "${failure}")
  endif()
endfunction()

if(NOT PKG_CONFIG)
  finish("pkg-config is not installed (apt-get install pkg-config)")
endif()
file(REMOVE_RECURSE "${PREFIX}")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  finish("cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed: ${out}")
endif()

# The library (its file named for its SONAME) and its development link; the managed side where the library looks for it.
set(expected include/moerging.h lib/libmoerging.so.${ABI} lib/pkgconfig/moerging.pc share/doc/moerging/LICENSE
  share/doc/moerging/THIRD-PARTY-NOTICES.txt)
if(MODE STREQUAL "aot")
  list(APPEND expected lib/MoErging.Interop.so)
else()
  list(APPEND expected lib/moerging/MoErging.Interop.dll lib/moerging/MoErging.Interop.runtimeconfig.json)
endif()
foreach(file IN LISTS expected)
  if(NOT EXISTS "${PREFIX}/${file}" OR IS_SYMLINK "${PREFIX}/${file}")
    finish("the install lacks the file ${file} under ${PREFIX}")
  endif()
endforeach()
# The development link (READ_SYMLINK of anything else would stop the script before it wrote its report).
if(NOT IS_SYMLINK "${PREFIX}/lib/libmoerging.so")
  finish("lib/libmoerging.so must be a symbolic link to libmoerging.so.${ABI}; it is missing or not a link")
endif()
file(READ_SYMLINK "${PREFIX}/lib/libmoerging.so" got)
if(NOT got STREQUAL "libmoerging.so.${ABI}")
  finish("lib/libmoerging.so must be a symbolic link to libmoerging.so.${ABI} (it is '${got}')")
endif()

set(ENV{PKG_CONFIG_PATH} "${PREFIX}/lib/pkgconfig")
execute_process(COMMAND "${PKG_CONFIG}" --cflags --libs moerging RESULT_VARIABLE rc OUTPUT_VARIABLE flags
  ERROR_VARIABLE error OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  finish("pkg-config --cflags --libs moerging failed: ${error}")
endif()
execute_process(COMMAND "${PKG_CONFIG}" --modversion moerging OUTPUT_VARIABLE modversion OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT modversion STREQUAL VERSION)
  finish("moerging.pc says version '${modversion}', expected ${VERSION}")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
set(program "${PREFIX}/install_check")
execute_process(COMMAND "${CC}" -std=c11 -Wall -Wextra -Werror -o "${program}"
  "${SOURCE_DIR}/install_check.c" "${SOURCE_DIR}/fixture.c" -I "${SOURCE_DIR}" ${flags} -lm "-Wl,-rpath,${PREFIX}/lib"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  finish("compiling install_check.c with '${flags}' failed: ${out}")
endif()

# A bare environment: the NativeAOT build must run without DOTNET_ROOT and prove no runtime was loaded; the
# hosted one is told where the runtime is, as its users are.
if(MODE STREQUAL "aot")
  set(run env -i PATH=/usr/bin:/bin "${program}" "${VERSION}" --no-runtime)
else()
  set(run env -i PATH=/usr/bin:/bin "DOTNET_ROOT=${DOTNET_ROOT}" "${program}" "${VERSION}")
endif()
execute_process(COMMAND ${run} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
message(STATUS "${out}")
if(NOT rc EQUAL 0)
  finish("${program} failed (${rc}): ${out}")
endif()
finish("")
