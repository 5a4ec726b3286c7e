// Intrusive doubly-linked list: nodes live inside the objects they link, so
// queuing and unqueuing never allocate and removal is O(1).
#pragma once

#include <cstddef>

#include "loop/check.h"

namespace offload {

struct ListNode {
  ListNode* prev = nullptr;
  ListNode* next = nullptr;
  bool linked() const { return next != nullptr; }
};

// T must hold a ListNode at member `Member`; objects are not owned.
template <typename T, ListNode T::*Member>
class List {
 public:
  List() { head_.prev = head_.next = &head_; }
  List(const List&) = delete;
  List& operator=(const List&) = delete;

  bool empty() const { return head_.next == &head_; }
  size_t size() const { return size_; }

  void push_back(T* item) { insert_before(&head_, item); }
  void push_front(T* item) { insert_before(head_.next, item); }

  T* front() const { return empty() ? nullptr : owner(head_.next); }
  T* back() const { return empty() ? nullptr : owner(head_.prev); }

  T* pop_front() {
    if (empty()) return nullptr;
    T* item = owner(head_.next);
    remove(item);
    return item;
  }

  void remove(T* item) {
    ListNode& n = item->*Member;
    OFFLOAD_ASSERT(n.linked());
    n.prev->next = n.next;
    n.next->prev = n.prev;
    n.prev = n.next = nullptr;
    --size_;
  }

  // Removes the item if it is linked (in this list: a node is in one list of
  // a given kind at a time).
  void remove_if_linked(T* item) {
    if ((item->*Member).linked()) remove(item);
  }

 private:
  static T* owner(ListNode* n) {
    // The offset of Member inside T, computed from a member pointer.
    const auto offset = reinterpret_cast<size_t>(&(static_cast<T*>(nullptr)->*Member));
    return reinterpret_cast<T*>(reinterpret_cast<char*>(n) - offset);
  }

  void insert_before(ListNode* pos, T* item) {
    ListNode& n = item->*Member;
    OFFLOAD_ASSERT(!n.linked());
    n.next = pos;
    n.prev = pos->prev;
    pos->prev->next = &n;
    pos->prev = &n;
    ++size_;
  }

  ListNode head_;
  size_t size_ = 0;
};

}  // namespace offload
