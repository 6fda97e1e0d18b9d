// A plugin that claims another ABI version: the loader must refuse it with a clear message.
#include "shmsched/transport.h"

extern "C" __attribute__((visibility("default"))) const shmsched_transport_api*
shmsched_transport_entry(void) {
  static shmsched_transport_api api{};
  api.abi_version = 999;
  api.struct_size = sizeof(shmsched_transport_api);
  api.name = "oldabi";
  return &api;
}
