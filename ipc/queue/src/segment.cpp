#include "shmsched/ipc/segment.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <chrono>
#include <cstring>
#include <new>
#include <thread>

#include "layout.h"
#include "segment_view.h"

namespace bip = boost::interprocess;

namespace shmsched::ipc {

using detail::Geometry;
using detail::Header;

struct Segment::Mapping {
  bip::shared_memory_object shm;
  bip::mapped_region region;
};

namespace {

std::string where(const std::string& name) {
  return "shared memory segment /dev/shm/" + name;
}

SegmentConfig config_of(const Geometry& g, const Header& h) {
  SegmentConfig c;
  c.max_queue_size = g.max_queue_size;
  c.max_payload_bytes = g.max_payload_bytes;
  c.max_extras_bytes = g.max_extras_bytes;
  c.max_users = g.max_users;
  c.max_active = g.max_active;
  c.max_participants = g.max_participants;
  c.max_executions_per_user = h.per_user_limit.load(std::memory_order_relaxed);
  c.mode = h.mode;
  c.default_durability_disk = h.default_durability_disk.load(std::memory_order_relaxed) != 0;
  return c;
}

bool same_sizes(const SegmentConfig& a, const SegmentConfig& b) {
  return a.max_queue_size == b.max_queue_size && a.max_payload_bytes == b.max_payload_bytes &&
         a.max_extras_bytes == b.max_extras_bytes && a.max_users == b.max_users &&
         a.max_active == b.max_active && a.max_participants == b.max_participants;
}

std::string describe(const SegmentConfig& c) {
  return "max_queue_size=" + std::to_string(c.max_queue_size) +
         " max_payload_bytes=" + std::to_string(c.max_payload_bytes) +
         " max_extras_bytes=" + std::to_string(c.max_extras_bytes) +
         " max_users=" + std::to_string(c.max_users) +
         " max_active=" + std::to_string(c.max_active) +
         " max_participants=" + std::to_string(c.max_participants);
}

void initialise(void* base, const Geometry& g, const SegmentConfig& cfg) {
  // The mapping is fresh from ftruncate and therefore zero; only what is not zero at start is
  // written, so untouched regions cost no memory.
  auto* h = new (base) Header{};
  h->layout_version = detail::kLayoutVersion;
  h->header_size = sizeof(Header);
  h->geo = g;
  h->mode = cfg.mode;
  h->per_user_limit.store(static_cast<std::uint32_t>(cfg.max_executions_per_user));
  h->queue_limit.store(static_cast<std::uint32_t>(cfg.max_queue_size));
  h->default_durability_disk.store(cfg.default_durability_disk ? 1 : 0);
  detail::SegmentView v(base);
  for (std::uint64_t i = 0; i < g.max_participants; ++i)
    new (&v.participant(i)) detail::Participant{};
  // Publish: the magic is the last word written, with release ordering.
  std::atomic_ref<std::uint64_t>(h->magic).store(detail::kMagic, std::memory_order_release);
}

// Checks a mapped segment before anything in it is trusted.
void validate_mapping(const std::string& name, const bip::mapped_region& region) {
  const auto size = region.get_size();
  if (size < sizeof(Header)) {
    throw SegmentError(where(name) + " is " + std::to_string(size) +
                       " bytes, too small to be a shmsched queue: remove it (shmschedctl "
                       "segment remove, or rm /dev/shm/" +
                       name + ") or choose another name");
  }
  auto* h = static_cast<Header*>(region.get_address());
  const std::uint64_t magic =
      std::atomic_ref<std::uint64_t>(h->magic).load(std::memory_order_acquire);
  if (magic == 0) {
    throw SegmentError(where(name) +
                       " is not initialised: its creator is still setting it up, "
                       "or died doing so. Retry in a moment; if it persists, remove it "
                       "(rm /dev/shm/" +
                       name + ") and restart the supervisor");
  }
  if (magic != detail::kMagic) {
    throw SegmentError(where(name) +
                       " is not a shmsched queue (bad magic): choose another "
                       "segment name or remove it");
  }
  if (h->layout_version != detail::kLayoutVersion) {
    throw SegmentError(where(name) + " has layout version " + std::to_string(h->layout_version) +
                       " but this build understands version " +
                       std::to_string(detail::kLayoutVersion) +
                       ": drain and stop its users, remove it (rm /dev/shm/" + name +
                       "), and let the supervisor of this version create it again");
  }
  if (h->header_size != sizeof(Header)) {
    throw SegmentError(where(name) + " has a header of " + std::to_string(h->header_size) +
                       " bytes, this build expects " + std::to_string(sizeof(Header)) +
                       ": it was made by an incompatible build; remove it and restart");
  }
  SegmentConfig stored = config_of(h->geo, *h);
  try {
    stored.validate();
  } catch (const ConfigError& e) {
    throw SegmentError(where(name) + " holds invalid sizes (" + e.what() + "): remove it");
  }
  const Geometry expected = detail::compute_geometry(stored);
  if (std::memcmp(&expected, &h->geo, sizeof(Geometry)) != 0 || size < expected.total_size) {
    throw SegmentError(where(name) + " is " + std::to_string(size) +
                       " bytes with a layout that "
                       "does not match its own sizes (expected " +
                       std::to_string(expected.total_size) + " bytes for " + describe(stored) +
                       "): it is corrupt or from an incompatible build; remove it and restart");
  }
}

}  // namespace

Segment::Segment(std::string name, std::unique_ptr<Mapping> mapping)
    : name_(std::move(name)),
      mapping_(std::move(mapping)),
      view_(std::make_unique<detail::SegmentView>(mapping_->region.get_address())) {}

Segment::~Segment() = default;

std::shared_ptr<Segment> Segment::create(const std::string& name, const SegmentConfig& config) {
  config.validate();
  const Geometry g = detail::compute_geometry(config);
  auto m = std::make_unique<Mapping>();
  try {
    bip::permissions perm;
    perm.set_permissions(config.mode);
    m->shm = bip::shared_memory_object(bip::create_only, name.c_str(), bip::read_write, perm);
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::already_exists_error) {
      throw SegmentError(where(name) + " already exists: attach to it, or remove it first");
    }
    throw SegmentError("cannot create " + where(name) + ": " + e.what() +
                       " (is /dev/shm mounted and writable?)");
  }
  try {
    // shm_open applies the umask; the configured mode is what decides who may produce.
    ::fchmod(m->shm.get_mapping_handle().handle, config.mode);
    m->shm.truncate(static_cast<bip::offset_t>(g.total_size));
    m->region = bip::mapped_region(m->shm, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    bip::shared_memory_object::remove(name.c_str());
    throw SegmentError("cannot size " + where(name) + " to " + std::to_string(g.total_size) +
                       " bytes: " + e.what() +
                       " (is /dev/shm large enough? lower "
                       "max_queue_size or max_payload_bytes)");
  }
  initialise(m->region.get_address(), g, config);
  return std::shared_ptr<Segment>(new Segment(name, std::move(m)));
}

std::shared_ptr<Segment> Segment::attach(const std::string& name) {
  auto m = std::make_unique<Mapping>();
  try {
    m->shm = bip::shared_memory_object(bip::open_only, name.c_str(), bip::read_write);
    m->region = bip::mapped_region(m->shm, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::not_found_error) {
      throw SegmentError(where(name) +
                         " does not exist: start the supervisor (shmschedd) first, "
                         "or check the segment name");
    }
    if (e.get_error_code() == bip::security_error) {
      throw SegmentError("no permission to open " + where(name) +
                         " read-write: join the group that owns it, or submit over the ZeroMQ "
                         "ingress instead");
    }
    throw SegmentError("cannot attach to " + where(name) + ": " + e.what());
  }
  validate_mapping(name, m->region);
  return std::shared_ptr<Segment>(new Segment(name, std::move(m)));
}

std::shared_ptr<Segment> Segment::open_or_create(const std::string& name,
                                                 const SegmentConfig& config) {
  config.validate();
  for (int attempt = 0;; ++attempt) {
    try {
      return create(name, config);
    } catch (const SegmentError&) {
      // Exists (or lost a creation race): attach below.
    }
    try {
      auto seg = attach(name);
      const SegmentConfig have = seg->config();
      if (!same_sizes(have, config)) {
        throw SegmentError(where(name) + " exists with other sizes (" + describe(have) +
                           ") than configured (" + describe(config) +
                           "): drain it and remove it (rm /dev/shm/" + name +
                           ") to apply the new sizes, or configure the existing ones");
      }
      return seg;
    } catch (const SegmentError& e) {
      // A creator may be between shm_open and publishing the magic: give it a moment.
      if (attempt >= 50 ||
          std::string_view(e.what()).find("not initialised") == std::string_view::npos) {
        throw;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

bool Segment::remove(const std::string& name) {
  return bip::shared_memory_object::remove(name.c_str());
}

SegmentConfig Segment::config() const {
  return config_of(*view_->geo, *view_->hdr);
}

int Segment::prefault(std::uint64_t entries) const {
  const detail::SegmentView& v = *view_;
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const auto populate = [&](std::uint64_t from, std::uint64_t to) {
    to = std::min(to, v.geo->total_size);
    from &= ~(page - 1);
    if (from >= to) return 0;
    return ::madvise(v.base + from, to - from, MADV_POPULATE_WRITE) == 0 ? 0 : errno;
  };
  // The id index is hashed: once there are as many entries as it has pages, about every page
  // is touched. The slots of a new segment are taken in order.
  if (entries >= (v.geo->off_slots - v.geo->off_dedup) / page) {
    if (const int e = populate(v.geo->off_dedup, v.geo->off_slots)) return e;
  }
  const std::uint64_t n = std::min(entries, v.geo->slot_count);
  return populate(v.geo->off_slots, v.geo->off_slots + n * v.geo->slot_stride);
}

std::uint64_t Segment::size_bytes() const {
  return mapping_->region.get_size();
}

void Segment::set_max_executions_per_user(std::uint64_t limit) {
  if (limit < 1 || limit > (1ULL << 23)) {
    throw ConfigError("max_executions_per_user = " + std::to_string(limit) +
                      " is out of range: use 1 .. 8388608");
  }
  view_->hdr->per_user_limit.store(static_cast<std::uint32_t>(limit), std::memory_order_relaxed);
}

void Segment::set_default_durability_disk(bool disk) {
  view_->hdr->default_durability_disk.store(disk ? 1 : 0, std::memory_order_relaxed);
}

bool Segment::default_durability_disk() const {
  return view_->hdr->default_durability_disk.load(std::memory_order_relaxed) != 0;
}

bool Segment::durable_marks() const {
  return view_->hdr->durable_marks.load(std::memory_order_relaxed) != 0;
}

std::uint32_t Segment::durable_waiters() const {
  return view_->hdr->durable_waiters.load(std::memory_order_relaxed);
}

namespace detail {
const SegmentView& view_of(const Segment& segment) {
  return *segment.view_;
}
}  // namespace detail

}  // namespace shmsched::ipc
