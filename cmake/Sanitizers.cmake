# -DOFFLOAD_SANITIZE=address,undefined builds everything with those sanitizers.
set(OFFLOAD_SANITIZE "" CACHE STRING "comma-separated -fsanitize= list (empty: none)")
if(OFFLOAD_SANITIZE)
  add_compile_options(-fsanitize=${OFFLOAD_SANITIZE} -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${OFFLOAD_SANITIZE})
endif()
