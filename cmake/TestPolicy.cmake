# How the suite treats tests that cannot run here, and areas whose targets are missing.
#
# A test that needs something this machine lacks (root for BPF, a libFuzzer-capable
# clang) exits 77, which ctest shows as a SKIP. Where everything must run (CI, as root,
# sets -DOFFLOAD_REQUIRE_ALL_TESTS=ON) exit 77 is a plain failure instead: the test's
# "SKIP: reason" line is then the failure's message.
option(OFFLOAD_REQUIRE_ALL_TESTS "a test that would SKIP (exit 77) fails instead" OFF)

# offload_skippable_tests(TEST...): exit 77 is a SKIP, unless every test is required.
function(offload_skippable_tests)
  if(NOT OFFLOAD_REQUIRE_ALL_TESTS)
    set_tests_properties(${ARGN} PROPERTIES SKIP_RETURN_CODE 77)
  endif()
endfunction()

# offload_require_targets(AREA TARGET...): an area of tests must not vanish quietly
# when what it tests is missing from the build: the configure fails and says why.
function(offload_require_targets area)
  foreach(target ${ARGN})
    if(NOT TARGET ${target})
      message(FATAL_ERROR "${area}: the target ${target} is not in this build; "
        "its tests cannot run")
    endif()
  endforeach()
endfunction()
