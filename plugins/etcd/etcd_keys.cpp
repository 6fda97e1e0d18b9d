#include "etcd_keys.h"

namespace shmsched::etcd {

std::string Keys::command(std::string_view execution_id) const {
  return root_ + "commands/" + std::string(execution_id);
}

std::string Keys::inbox(std::string_view worker_id, std::string_view execution_id) const {
  return root_ + "workers/" + std::string(worker_id) + "/inbox/" + std::string(execution_id);
}

std::string Keys::registration(std::string_view worker_id) const {
  return root_ + "workers/" + std::string(worker_id) + "/registration";
}

std::string Keys::owner(std::string_view execution_id) const {
  return root_ + "tasks/" + std::string(execution_id) + "/owner";
}

std::string Keys::dispatched(std::string_view execution_id) const {
  return root_ + "tasks/" + std::string(execution_id) + "/dispatched";
}

std::string Keys::event(std::string_view execution_id, std::string_view type) const {
  return root_ + "events/" + std::string(execution_id) + "/" + std::string(type);
}

Keys::Parsed Keys::parse(std::string_view key) const {
  Parsed p;
  if (key.substr(0, root_.size()) != root_) return p;
  key.remove_prefix(root_.size());
  // An id is what lies between the folder and the suffix. Execution ids may hold a '/' (the
  // queue takes any bytes): under tasks/ there is nothing but <id>/owner and <id>/dispatched, so
  // tasks/<id>/owner names one id whatever it holds. Not so under workers/: the inbox key of an
  // execution "registration" pushed to worker w is workers/w/inbox/registration, which must not
  // register a worker "w/inbox": worker ids with a '/' are not recognised there.
  auto middle = [](std::string_view rest, std::string_view suffix,
                   bool slashes) -> std::optional<std::string> {
    if (rest.size() <= suffix.size() || rest.substr(rest.size() - suffix.size()) != suffix) {
      return std::nullopt;
    }
    rest.remove_suffix(suffix.size());
    if (rest.empty() || (!slashes && rest.find('/') != std::string_view::npos)) {
      return std::nullopt;
    }
    return std::string(rest);
  };
  if (key.rfind("tasks/", 0) == 0) {
    if (auto id = middle(key.substr(6), "/owner", true)) {
      p.kind = Parsed::kOwner;
      p.id = std::move(*id);
    }
  } else if (key.rfind("workers/", 0) == 0) {
    if (auto id = middle(key.substr(8), "/registration", false)) {
      p.kind = Parsed::kRegistration;
      p.id = std::move(*id);
    }
  }
  return p;
}

std::string prefix_end(std::string prefix) {
  while (!prefix.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(prefix.back());
    if (last < 0xff) {
      ++last;
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // every key
}

}  // namespace shmsched::etcd
