// A plugin built for version 1 of the ABI (before publish_batch): its table is shorter and says
// version 1. The loader must refuse it with a message that says to rebuild it.
#include <cstddef>

#include "shmsched/transport.h"

extern "C" __attribute__((visibility("default"))) const shmsched_transport_api*
shmsched_transport_entry(void) {
  static shmsched_transport_api api{};
  api.abi_version = 1;
  api.struct_size = offsetof(shmsched_transport_api, publish_batch);  // a version 1 table
  api.name = "oldabi";
  return &api;
}
