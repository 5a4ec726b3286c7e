// What an io_uring operation carries: its owner and the handler of its
// result. The SQE's user_data is the Completion's address, so the loop hands
// each CQE straight to its handler and never needs to know which component
// submitted it: adding a component adds handlers, not cases to a switch.
//
// A Completion lives inside the object it serves (a connection, a listener)
// and is set up once with bind(); a multishot operation delivers every CQE to
// the same Completion.
#pragma once

#include <liburing.h>

namespace offload {

struct Completion {
  using Handler = void (*)(void* component, void* object, const io_uring_cqe& cqe);
  Handler handler = nullptr;
  void* component = nullptr;  // the part that submitted it (a proxy, a pool)
  void* object = nullptr;     // what it was for (a connection, a listener)

  bool bound() const { return handler != nullptr; }
  void complete(const io_uring_cqe& cqe) const { handler(component, object, cqe); }
};

// Makes `c` call component->*Method(object, cqe) for each of its CQEs.
template <auto Method, typename Component, typename Object>
void bind(Completion& c, Component* component, Object* object) {
  c.component = component;
  c.object = object;
  c.handler = [](void* comp, void* obj, const io_uring_cqe& cqe) {
    (static_cast<Component*>(comp)->*Method)(static_cast<Object*>(obj), cqe);
  };
}

// Makes `c` call component->*Method(cqe): an operation of the component's own.
template <auto Method, typename Component>
void bind(Completion& c, Component* component) {
  c.component = component;
  c.object = nullptr;
  c.handler = [](void* comp, void*, const io_uring_cqe& cqe) { (static_cast<Component*>(comp)->*Method)(cqe); };
}

}  // namespace offload
