// A shared object that is not a transport (no entry symbol): the loader must refuse it.
extern "C" __attribute__((visibility("default"))) int not_a_transport(void) {
  return 42;
}
