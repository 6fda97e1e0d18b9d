# Installation layout and Debian packages (CPack). Build packages with the /usr prefix:
#   cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr
#   cmake --build build && (cd build && cpack -G DEB)
# gives shmsched_<version>_<arch>.deb (daemon, shmschedctl, the zeromq transport, unit, user,
# configuration, docs) and shmsched-transport-kafka_<version>_<arch>.deb (librdkafka only there).

set(SHMSCHED_CONFIG_FILE ${CMAKE_INSTALL_FULL_SYSCONFDIR}/shmsched/shmschedd.conf)
configure_file(systemd/shmschedd.service.in ${CMAKE_BINARY_DIR}/systemd/shmschedd.service @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/systemd/shmschedd.service
  DESTINATION ${CMAKE_INSTALL_PREFIX}/lib/systemd/system COMPONENT server)
install(FILES systemd/shmsched.sysusers DESTINATION ${CMAKE_INSTALL_PREFIX}/lib/sysusers.d
  RENAME shmsched.conf COMPONENT server)
install(FILES systemd/shmschedd.conf DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/shmsched
  COMPONENT server)
install(FILES README.md docs/architecture.md docs/protocol.md docs/operations.md docs/plugins.md
  docs/benchmarks.md docs/audit.md DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT server)
install(FILES include/shmsched/transport.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/shmsched
  COMPONENT server)

set(CPACK_PACKAGE_NAME shmsched)
set(CPACK_PACKAGE_VENDOR "shmsched")
set(CPACK_PACKAGE_CONTACT "shmsched developers <shmsched@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "single-host execution scheduler over a shared-memory queue")
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_SET_DESTDIR ON)  # the configuration goes to /etc, outside the prefix
set(CPACK_GENERATOR DEB)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL server kafka etcd)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)  # depends on the runtime libraries it links, only
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_SERVER_PACKAGE_NAME shmsched)
set(CPACK_DEBIAN_SERVER_PACKAGE_DEPENDS "systemd | systemd-standalone-sysusers")
set(CPACK_DEBIAN_KAFKA_PACKAGE_NAME shmsched-transport-kafka)
set(CPACK_DEBIAN_KAFKA_PACKAGE_DEPENDS "shmsched (= ${PROJECT_VERSION})")
set(CPACK_DEBIAN_ETCD_PACKAGE_NAME shmsched-transport-etcd)  # gRPC and protobuf only there
set(CPACK_DEBIAN_ETCD_PACKAGE_DEPENDS "shmsched (= ${PROJECT_VERSION})")
# The configuration is a conffile (an edited one survives an upgrade); the user is created at
# installation; nothing starts by itself.
configure_file(packaging/conffiles.in ${CMAKE_BINARY_DIR}/packaging/conffiles @ONLY)
set(SHMSCHED_SYSUSERS_FILE ${CMAKE_INSTALL_PREFIX}/lib/sysusers.d/shmsched.conf)
configure_file(packaging/postinst ${CMAKE_BINARY_DIR}/packaging/postinst @ONLY)
configure_file(packaging/prerm ${CMAKE_BINARY_DIR}/packaging/prerm COPYONLY)
set(CPACK_DEBIAN_SERVER_PACKAGE_CONTROL_EXTRA
  "${CMAKE_BINARY_DIR}/packaging/conffiles;${CMAKE_BINARY_DIR}/packaging/postinst;${CMAKE_BINARY_DIR}/packaging/prerm")
set(CPACK_DEBIAN_SERVER_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
