#include "etcd_connection.h"

#include <fstream>
#include <sstream>

namespace shmsched::etcd {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::shared_ptr<grpc::ChannelCredentials> credentials(const Options& o) {
  if (!o.tls()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  if (!o.tls_ca_file.empty()) ssl.pem_root_certs = read_file(o.tls_ca_file);
  if (!o.tls_cert_file.empty()) {
    ssl.pem_cert_chain = read_file(o.tls_cert_file);
    ssl.pem_private_key = read_file(o.tls_key_file);
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

bool unreachable(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::UNKNOWN:  // a connection reset mid-call
      return true;
    default:
      return false;
  }
}

std::string describe(const grpc::Status& status) {
  return "gRPC code " + std::to_string(static_cast<int>(status.error_code())) + ": " +
         status.error_message();
}

Connection::Connection(const Options& o)
    : tls_(o.tls()),
      dial_timeout_(o.dial_timeout),
      request_timeout_(o.request_timeout),
      user_(o.user),
      password_(o.password) {
  const auto creds = credentials(o);
  for (const auto& e : o.endpoints) {
    grpc::ChannelArguments args;
    // etcd restarted or a member back: reconnect within a fraction of a second, not gRPC's
    // default of up to two minutes.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // A member that hangs without closing the connection is noticed (etcd refuses pings more
    // often than every 5 s).
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    // A resync reads many task keys at once.
    args.SetMaxReceiveMessageSize(-1);
    // Each plugin instance its own connections (a reload runs two instances side by side).
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    Endpoint ep;
    ep.address = e.address;
    ep.channel = grpc::CreateCustomChannel(e.address, creds, args);
    ep.stubs.kv = etcdserverpb::KV::NewStub(ep.channel);
    ep.stubs.watch = etcdserverpb::Watch::NewStub(ep.channel);
    ep.stubs.lease = etcdserverpb::Lease::NewStub(ep.channel);
    ep.stubs.maintenance = etcdserverpb::Maintenance::NewStub(ep.channel);
    ep.stubs.index = endpoints_.size();
    endpoints_.push_back(std::move(ep));
  }
}

bool Connection::connect(std::string& error) {
  const auto deadline = std::chrono::system_clock::now() + dial_timeout_;
  std::string tried;
  // Each endpoint gets a slice of the dial timeout, round after round, until one connects.
  const auto slice = std::max<std::chrono::milliseconds>(std::chrono::milliseconds(200),
                                                         dial_timeout_ / (2 * endpoints_.size()));
  while (std::chrono::system_clock::now() < deadline) {
    for (std::size_t i = 0; i < endpoints_.size(); ++i) {
      const auto until = std::min(deadline, std::chrono::system_clock::now() + slice);
      if (endpoints_[i].channel->WaitForConnected(until)) {
        current_ = i;
        return user_.empty() || authenticate(error);
      }
    }
  }
  for (const auto& e : endpoints_) tried += (tried.empty() ? "" : ", ") + e.address;
  error = "cannot reach etcd at " + tried + " within " + std::to_string(dial_timeout_.count()) +
          " ms (etcd.dial_timeout_ms): is etcd running, and are etcd.endpoints right?" +
          (tls_ ? " With TLS: does etcd.tls_ca_file hold the CA that signed etcd's certificate, "
                  "and does the certificate name the endpoint's address?"
                : "");
  return false;
}

bool Connection::authenticate(std::string& error) {
  etcdserverpb::AuthenticateRequest req;
  req.set_name(user_);
  req.set_password(password_);
  etcdserverpb::AuthenticateResponse resp;
  auto stub = etcdserverpb::Auth::NewStub(endpoints_[current_].channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + request_timeout_);
  const grpc::Status s = stub->Authenticate(&ctx, req, &resp);
  if (!s.ok()) {
    error = "etcd refused user '" + user_ + "' (" + describe(s) +
            "): check etcd.user and etcd.password, and that etcd has auth enabled";
    return false;
  }
  std::lock_guard lock(token_mu_);
  token_ = resp.token();
  return true;
}

Connection::Stubs Connection::current() {
  return endpoints_[current_.load()].stubs;
}

bool Connection::failed(std::size_t index, const grpc::Status& status) {
  if (status.error_code() == grpc::StatusCode::UNAUTHENTICATED && !user_.empty()) {
    // The token expired (etcd's simple tokens live 5 minutes unused, and die with a restart):
    // the next context() fetches a new one (not here: this may be a gRPC callback thread).
    reauthenticate_ = true;
    return true;
  }
  if (!unreachable(status) && status.error_message().find("no leader") == std::string::npos) {
    return false;
  }
  if (endpoints_.size() > 1) {
    std::size_t expected = index;
    current_.compare_exchange_strong(expected, (index + 1) % endpoints_.size());
  }
  return true;
}

std::unique_ptr<grpc::ClientContext> Connection::context(bool deadline) {
  if (reauthenticate_.exchange(false)) {
    std::string ignored;  // a failure shows in the call that follows
    authenticate(ignored);
  }
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (deadline) ctx->set_deadline(std::chrono::system_clock::now() + request_timeout_);
  // A stream to a member cut off from the others is ended by etcd instead of going quiet.
  ctx->AddMetadata("hasleader", "true");
  std::lock_guard lock(token_mu_);
  if (!token_.empty()) ctx->AddMetadata("token", token_);
  return ctx;
}

}  // namespace shmsched::etcd
