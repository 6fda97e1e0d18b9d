// Reused lists of the scheduler's actions. One pass of the loop may hold several at once
// (carrying out an action may announce, which carries out its own list), and a list of a few
// thousand actions allocated afresh each time is a large allocation that glibc maps and unmaps:
// a page fault for every page, every pass. Leased lists keep their capacity.
#pragma once

#include <memory>
#include <vector>

#include "shmsched/core/scheduler.h"

namespace shmsched::daemon {

class ActionLists {
 public:
  class Lease {
   public:
    Lease(ActionLists& owner, std::unique_ptr<std::vector<core::Action>> list)
        : owner_(owner), list_(std::move(list)) {}
    ~Lease() {
      list_->clear();
      owner_.spare_.push_back(std::move(list_));
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    std::vector<core::Action>& operator*() { return *list_; }
    std::vector<core::Action>* operator->() { return list_.get(); }

   private:
    ActionLists& owner_;
    std::unique_ptr<std::vector<core::Action>> list_;
  };

  Lease lease() {
    if (spare_.empty()) return Lease(*this, std::make_unique<std::vector<core::Action>>());
    auto list = std::move(spare_.back());
    spare_.pop_back();
    return Lease(*this, std::move(list));
  }

 private:
  std::vector<std::unique_ptr<std::vector<core::Action>>> spare_;
};

}  // namespace shmsched::daemon
