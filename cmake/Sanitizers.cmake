# -DOFFLOAD_SANITIZE=address,undefined builds everything with those sanitizers (ci/test.sh
# does, in build-asan). A finding stops the process (-fno-sanitize-recover), so undefined
# behaviour fails a test instead of scrolling past in its log.
set(OFFLOAD_SANITIZE "" CACHE STRING "comma-separated -fsanitize= list (empty: none)")
if(OFFLOAD_SANITIZE)
  add_compile_options(-fsanitize=${OFFLOAD_SANITIZE} -fno-sanitize-recover=all
    -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${OFFLOAD_SANITIZE})
endif()
