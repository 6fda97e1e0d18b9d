// A producer for end-to-end tests, built on the crash-point build of the queue: it attaches to a
// segment and submits one execution, stopping (SIGSTOP) or dying (SIGKILL) at the first crash
// point whose description contains the given text.
//   crash_point_producer <segment> <stop|kill> <crash point text> <execution_id> <user_id>
#include <signal.h>

#include <cstdio>
#include <string>

#include "shmsched/ipc/crash_points.h"
#include "shmsched/ipc/queue.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s <segment> <stop|kill> <crash point> <id> <user>\n", argv[0]);
    return 2;
  }
  const std::string how = argv[2];
  auto segment = shmsched::ipc::Segment::attach(argv[1]);
  shmsched::ipc::Producer producer(segment);
  shmsched::ipc::crash_points::arm_at(argv[3], how == "stop" ? SIGSTOP : SIGKILL, -1);
  const std::string id = argv[4];
  const std::string user = argv[5];
  shmsched::ipc::SubmitRequest r;
  r.execution_id = id;
  r.user_id = user;
  const auto res = producer.submit(r);
  std::printf("%s\n", res.accepted() ? "accepted" : res.message.c_str());
  return res.accepted() ? 0 : 1;
}
