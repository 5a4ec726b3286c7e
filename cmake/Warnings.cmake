# offload_warnings(TARGET): warnings as errors on the project's own code only.
function(offload_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Werror -Wshadow -Wnon-virtual-dtor -Wcast-align
    -Wunused -Wdouble-promotion -Wformat=2 -Wimplicit-fallthrough
    -Wno-missing-field-initializers)
endfunction()
