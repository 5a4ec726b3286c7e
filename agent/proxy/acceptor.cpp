#include "proxy/acceptor.h"

#include <sys/socket.h>
#include <unistd.h>

#include "loop/check.h"

namespace offload {

Acceptor::Acceptor(Loop& loop, Counters& counters, void* owner, OnAccepted on_accepted)
    : loop_(loop), counters_(counters), owner_(owner), on_accepted_(on_accepted) {
  bind<&Acceptor::on_retry>(retry_timer_, this);
  loop_.add_timers(retry_list_);
}

void Acceptor::serve(Listener* l) {
  for (ListenSocket& s : l->sockets) {
    bind<&Acceptor::on_accept>(s.accepted, this, &s);
    sockets_.push_back(&s);
  }
}

void Acceptor::start() {
  for (ListenSocket* s : sockets_) post(s);
}

void Acceptor::post(ListenSocket* s) {
  if (stopped_) return;
  OFFLOAD_ASSERT(!s->armed);
  s->armed = true;
  io_uring_prep_multishot_accept(loop_.sqe(s->accepted), s->fd, nullptr, nullptr, SOCK_CLOEXEC);
}

void Acceptor::on_accept(ListenSocket* s, const io_uring_cqe& cqe) {
  if (!(cqe.flags & IORING_CQE_F_MORE)) {
    s->armed = false;
    const int res = cqe.res;
    if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
      bump(counters_.accept_pauses);
      if (!retry_timer_.armed()) loop_.arm(retry_timer_, retry_list_);
    } else {
      post(s);
    }
  }
  if (cqe.res < 0) return;
  Listener* l = s->listener;
  if (stopped_ && !l->serve_late) {
    ::close(cqe.res);
    return;
  }
  on_accepted_(owner_, l, cqe.res);
}

void count_refusal(Verdict v, Counters& counters) {
  switch (v) {
    case Verdict::kAccept: return;
    case Verdict::kOverSourceLimit: bump(counters.rejected_per_source); return;
    case Verdict::kSourceTableFull: bump(counters.rejected_source_table_full); return;
    case Verdict::kDenied:
    case Verdict::kNotAllowed: bump(counters.rejected_screened); return;
  }
}

void Acceptor::on_retry() {
  for (ListenSocket* s : sockets_)
    if (!s->armed) post(s);
}

}  // namespace offload
