# offload_warnings(TARGET): warnings as errors on the project's own code only.
#
# Except -Wrestrict from GCC 12 at -O3 (Release): it reports overlapping memcpy
# inside libstdc++'s basic_string::_M_replace for plain string assignments and
# concatenations (a known false positive, GCC bug 105329 and its relatives), so
# Release did not build.
# Every other build type keeps -Wrestrict as an error, so CI still catches a real one.
function(offload_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Werror -Wshadow -Wnon-virtual-dtor -Wcast-align
    -Wunused -Wdouble-promotion -Wformat=2 -Wimplicit-fallthrough
    -Wno-missing-field-initializers
    $<$<AND:$<CXX_COMPILER_ID:GNU>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,13>,$<CONFIG:Release>>:-Wno-restrict>)
endfunction()
