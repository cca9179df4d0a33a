// miad's SIMT emulator, runtime (libmiadsim.so): fibers, the seeded scheduler, barriers,
// warp collectives, clusters, mbarriers, cp.async, ldmatrix/mma, and the C ABI the tests
// call. One launch runs entirely inside miad_sim_launch; only one of its OS threads runs at
// any time, so the schedule is a function of the seed alone.
#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// The runtime itself is built without instrumentation (it is the hot path); with
// MIAD_SIM_ASAN it uses the preloaded ASan runtime's fiber and poisoning interfaces.
#if defined(MIAD_SIM_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define MIAD_ASAN 1
#endif

#include "simt.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace miad_sim {
namespace {

constexpr size_t kStack = 256 * 1024;     // per fiber (ASan frames are large)
constexpr uint32_t kMaxDyn = 232448;      // 227 KiB: the most an sm_90 block can opt into
constexpr uint32_t kRankShift = 24;       // shared::cluster address: (rank + 1) << 24 | offset
constexpr uint32_t kOffMask = (1u << kRankShift) - 1;

struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return (size_t)(next() % n); }
};

// ---- context switching
#if defined(__x86_64__)
extern "C" void miad_sim_switch(void **save_sp, void *new_sp);
asm(R"(
.text
.globl miad_sim_switch
.type miad_sim_switch,@function
miad_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size miad_sim_switch,.-miad_sim_switch
)");
#endif

enum class St { Ready, Running, Barrier, Warp, ClusterWait, MbarWait, Done };

struct Block;
struct Launch;

struct CpCopy {
  void *dst;
  const void *src;
  unsigned bytes, src_bytes;
};

struct Fiber {
  ThreadView view;
  int linear = 0, lane = 0, warp = 0;
  St st = St::Ready;
  Block *blk = nullptr;
  void *sp = nullptr;
  char *stack = nullptr;
  // Warp collective in progress.
  Op op = SYNCWARP;
  unsigned mask = 0;
  int line = 0, a0 = 0, width = 32;
  const void *cin = nullptr;
  void *cout = nullptr;
  // Cluster barrier: the phase this thread arrived in (-1: none outstanding).
  long cl_arrived = -1;
  // mbarrier wait.
  uint64_t mb_key = 0;
  uint32_t mb_parity = 0;
  // cp.async: copies issued, group boundaries (indices into cp) of committed groups.
  std::vector<CpCopy> cp;
  std::vector<size_t> groups;
#if defined(MIAD_ASAN)
  void *fake_stack = nullptr;
#endif
#if !defined(__x86_64__)
  ucontext_t uc;
#endif
};

struct MBar {
  uint32_t expected = 0, pending = 0;
  int64_t tx = 0;
  uint64_t phase = 0;  // completed phases
};

struct Block {
  Launch *L = nullptr;
  int rank = 0;
  uint3 bid{};
  std::vector<Fiber *> fibers;
  std::vector<Fiber *> runnable;
  int exited = 0;
  std::vector<uint32_t> warp_exited;  // lanes that have exited, by warp
  int bar_count = 0, bar_line = 0;
  bool done = false;
  char *tls = nullptr;  // this block's copy of the module's thread_local block
  size_t tls_size = 0;
  char *dyn = nullptr;
};

// Fiber stacks handed back by OS threads that ended (the extra threads of a cluster launch
// live for one cluster), reused by the next: mapping and faulting in fresh stacks for every
// cluster was most of an emulated cluster launch's system time.
struct StackPool {
  std::mutex mu;
  std::vector<char *> free;
};
StackPool &stack_pool() {
  static StackPool *pool = new StackPool;  // never destroyed: threads may end after main
  return *pool;
}

// Per OS thread: fiber stacks and the scheduler's context.
struct Worker {
  std::vector<char *> stacks;
  void *sched_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t sched_uc;
#endif
  Fiber *cur = nullptr;
  Launch *L = nullptr;
  const void *sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
  bool dirty = false;  // stacks abandoned mid-frame (after an error): unpoison before reuse
  ~Worker() {
    StackPool &pool = stack_pool();
    std::lock_guard<std::mutex> lk(pool.mu);
    pool.free.insert(pool.free.end(), stacks.begin(), stacks.end());
  }
  char *stack(size_t i) {
    while (stacks.size() <= i) {
      char *reused = nullptr;
      {
        StackPool &pool = stack_pool();
        std::lock_guard<std::mutex> lk(pool.mu);
        if (!pool.free.empty()) {
          reused = pool.free.back();
          pool.free.pop_back();
        }
      }
      if (reused) {
#if defined(MIAD_ASAN)
        // A thread that ended after an error may have left frames poisoned.
        __asan_unpoison_memory_region(reused, kStack);
#endif
        stacks.push_back(reused);
        continue;
      }
      void *m = mmap(nullptr, kStack + 4096, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) return nullptr;
      mprotect(m, 4096, PROT_NONE);  // guard page below the stack
      stacks.push_back((char *)m + 4096);
    }
    return stacks[i];
  }
};
__attribute__((tls_model("initial-exec"))) thread_local Worker t_worker;

using ModuleTls = void (*)(void **base, size_t *size, void **dyn);
using Tramp = void (*)(void **args);

struct Launch {
  Tramp fn = nullptr;
  void **args = nullptr;
  ModuleTls module_tls = nullptr;
  dim3 grid, block, cluster;
  uint32_t dyn = 0;
  int nthreads = 0, cl_blocks = 1;
  Rng rng{0};
  uint64_t poison_seed = 0;
  // Fiber order within a block: 0 seeded random; 1 (seed bit 32) the lowest-numbered ready
  // thread first, 2 (bit 33) the highest first. The warps then drift a whole phase apart,
  // which random order almost never does: a missing write-after-read barrier (a stage of
  // a pipeline refilled while another warp still reads it) shows up.
  int order = 0;
  std::string error;
  std::mutex err_mu;
  std::atomic<bool> has_error{false};
  // Cluster state.
  std::vector<std::unique_ptr<Block>> blocks;  // the cluster being run, by rank
  long cl_phase = 0;
  int cl_count = 0;
  std::map<uint64_t, MBar> mbars;  // (rank << 32 | offset)
  // Baton: which rank's OS thread runs (-1: none; -2: stop).
  std::mutex mu;
  std::condition_variable cv;
  int active = -1;
  bool finished = false;

  void fail(const std::string &msg) {
    std::lock_guard<std::mutex> g(err_mu);
    if (error.empty()) error = msg;
    has_error.store(true, std::memory_order_relaxed);
  }
  bool failed() { return has_error.load(std::memory_order_relaxed); }
};

[[noreturn]] void abandon();

std::string fmt(const char *f, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

Fiber *me() { return t_worker.cur; }
Launch *launch() { return t_worker.L; }

std::string where(const Fiber *f) {
  return fmt("block (%u,%u,%u) thread (%u,%u,%u)", f->view.bid.x, f->view.bid.y,
             f->view.bid.z, f->view.tid.x, f->view.tid.y, f->view.tid.z);
}

// Reports an error from inside a fiber and never returns to it.
[[noreturn]] void fiber_fail(const std::string &msg) {
  Fiber *f = me();
  launch()->fail(f ? where(f) + ": " + msg : msg);
  abandon();
}

void switch_to_fiber(Worker &w, Fiber *f) {
  w.cur = f;
  f->st = St::Running;
#if defined(MIAD_ASAN)
  void *fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack, kStack);
#endif
#if defined(__x86_64__)
  miad_sim_switch(&w.sched_sp, f->sp);
#else
  swapcontext(&w.sched_uc, &f->uc);
#endif
#if defined(MIAD_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  w.cur = nullptr;
}

// From a fiber back to its worker's scheduler.
void to_scheduler() {
  Worker &w = t_worker;
  Fiber *f = w.cur;
#if defined(MIAD_ASAN)
  __sanitizer_start_switch_fiber(f->st == St::Done ? nullptr : &f->fake_stack,
                                 w.sched_stack_bottom, w.sched_stack_size);
#endif
#if defined(__x86_64__)
  miad_sim_switch(&f->sp, w.sched_sp);
#else
  swapcontext(&f->uc, &w.sched_uc);
#endif
#if defined(MIAD_ASAN)
  __sanitizer_finish_switch_fiber(f->fake_stack, &w.sched_stack_bottom, &w.sched_stack_size);
#endif
  if (launch()->failed()) abandon();
}

[[noreturn]] void abandon() {
  Fiber *f = me();
  f->st = St::Done;
  t_worker.dirty = true;
  for (;;) to_scheduler();
}

void make_ready(Fiber *f) {
  f->st = St::Ready;
  f->blk->runnable.push_back(f);
}

// Gives other fibers a turn: the caller goes back to the ready set.
void yield_me() {
  Fiber *f = me();
  make_ready(f);
  to_scheduler();
}

void block_me(St st) {
  me()->st = st;
  to_scheduler();
}

void cluster_thread_exit(Launch *L, Fiber *f);
void warp_exit_check(Fiber *f);

void fiber_entry() {
  Worker &w = t_worker;
#if defined(MIAD_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &w.sched_stack_bottom, &w.sched_stack_size);
#endif
  Launch *L = w.L;
  Fiber *f = w.cur;
  L->fn(L->args);
  Block *b = f->blk;
  if (b->bar_count > 0)
    fiber_fail(fmt("exited while %d threads of its block wait at __syncthreads (line %d): "
                   "a barrier reached by only part of the block",
                   b->bar_count, b->bar_line));
  warp_exit_check(f);
  cluster_thread_exit(L, f);
  ++b->exited;
  b->warp_exited[(size_t)f->warp] |= 1u << f->lane;
  f->st = St::Done;
  for (;;) to_scheduler();
}

#if defined(__x86_64__)
extern "C" void miad_sim_fiber_start() { fiber_entry(); }
#endif

void init_fiber(Fiber *f, char *stack) {
  f->stack = stack;
#if defined(__x86_64__)
  uintptr_t top = ((uintptr_t)stack + kStack) & ~(uintptr_t)15;
  void **sp = (void **)top;
  *--sp = nullptr;                              // fake return address of the entry frame
  *--sp = (void *)&miad_sim_fiber_start;        // popped by `ret`
  for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12..r15
  f->sp = sp;
#else
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = stack;
  f->uc.uc_stack.ss_size = kStack;
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, (void (*)())fiber_entry, 0);
#endif
}

// ---- warp collectives
struct WarpGroup {
  unsigned mask = 0, arrived = 0;
  Op op = SYNCWARP;
  int line = 0;
};

// All pending collectives of a block's warps, by warp.
struct WarpState {
  std::vector<WarpGroup> groups;
};
__attribute__((tls_model("initial-exec"))) thread_local std::vector<WarpState> t_warps;  // of the block this OS thread runs

unsigned lanes_of(Block *b, int warp) {
  int n = (int)b->fibers.size() - warp * 32;
  return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

void compute(Block *b, int warp, const WarpGroup &g);

void warp_exit_check(Fiber *f) {
  for (auto &g : t_warps[f->warp].groups)
    if (g.mask >> f->lane & 1u)
      fiber_fail(fmt("exited while lanes %08x of its warp wait for it in a warp collective "
                     "(line %d)",
                     g.arrived, g.line));
}

const char *op_name(Op op) {
  static const char *n[] = {"__shfl_sync",       "__shfl_xor_sync",   "__shfl_up_sync",
                            "__shfl_down_sync",  "__ballot_sync",     "__any_sync",
                            "__all_sync",        "__reduce_add_sync", "__reduce_min_sync",
                            "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync",
                            "ldmatrix.x4",       "ldmatrix.x4.trans", "mma.sync f16",
                            "mma.sync bf16",     "__syncwarp"};
  return n[op];
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Device-side API (declared in simt.h).

const ThreadView *current() { return &t_worker.cur->view; }

void trap(const char *what) { fiber_fail(what); }

void yield() { yield_me(); }

void syncthreads(int line) {
  Fiber *f = me();
  Block *b = f->blk;
  if (b->exited > 0)
    fiber_fail(fmt("__syncthreads (line %d) after %d threads of the block exited: a barrier "
                   "reached by only part of the block",
                   line, b->exited));
  if (b->bar_count == 0) {
    b->bar_line = line;
  } else if (b->bar_line != line) {
    fiber_fail(fmt("divergent __syncthreads: line %d while %d threads wait at line %d", line,
                   b->bar_count, b->bar_line));
  }
  if (++b->bar_count == (int)b->fibers.size()) {
    b->bar_count = 0;
    for (Fiber *o : b->fibers)
      if (o->st == St::Barrier) make_ready(o);
    yield_me();
  } else {
    block_me(St::Barrier);
  }
}

void collective(Op op, unsigned mask, const void *in, void *out, int a0, int width, int line) {
  Fiber *f = me();
  Block *b = f->blk;
  if (!(mask >> f->lane & 1u))
    fiber_fail(fmt("%s (line %d) with mask %08x that does not name the calling lane %d",
                   op_name(op), line, mask, f->lane));
  unsigned exists = lanes_of(b, f->warp);
  if (mask & ~exists)
    fiber_fail(fmt("%s (line %d) with mask %08x naming lanes the block does not have (%08x)",
                   op_name(op), line, mask, exists));
  if (unsigned gone = mask & b->warp_exited[(size_t)f->warp])
    fiber_fail(fmt("%s (line %d): lanes %08x of the mask %08x have exited", op_name(op), line,
                   gone, mask));
  auto &groups = t_warps[f->warp].groups;
  WarpGroup *g = nullptr;
  for (auto &x : groups) {
    if (x.mask == mask) {
      g = &x;
    } else if (x.mask & mask) {
      fiber_fail(fmt("%s (line %d) with mask %08x while lanes %08x wait in %s (line %d) with "
                     "mask %08x",
                     op_name(op), line, mask, x.arrived, op_name(x.op), x.line, x.mask));
    }
  }
  if (!g) {
    groups.push_back(WarpGroup{mask, 0u, op, line});
    g = &groups.back();
  } else if (g->op != op || g->line != line) {
    fiber_fail(fmt("%s (line %d) while lanes %08x of the same mask wait in %s (line %d)",
                   op_name(op), line, g->arrived, op_name(g->op), g->line));
  }
  f->op = op;
  f->mask = mask;
  f->line = line;
  f->a0 = a0;
  f->width = width;
  f->cin = in;
  f->cout = out;
  g->arrived |= 1u << f->lane;
  if (g->arrived == mask) {
    WarpGroup done = *g;
    groups.erase(groups.begin() + (g - groups.data()));
    compute(b, f->warp, done);
    for (int l = 0; l < 32; ++l)
      if ((mask >> l & 1u) && l != f->lane) make_ready(b->fibers[f->warp * 32 + l]);
    yield_me();
  } else {
    block_me(St::Warp);
  }
}

void syncwarp(unsigned mask, int line) { collective(SYNCWARP, mask, nullptr, nullptr, 0, 32, line); }

namespace {

uint64_t u64_in(Fiber *f) { return *(const uint64_t *)f->cin; }

float half_bits_to_f32(uint16_t h, bool bf16) {
  return bf16 ? bf16_to_f32(h) : f16_to_f32(h);
}

void compute(Block *b, int warp, const WarpGroup &g) {
  Fiber *lanes[32] = {};
  for (int l = 0; l < 32; ++l)
    if (g.mask >> l & 1u) lanes[l] = b->fibers[warp * 32 + l];
  auto src_lane = [&](Fiber *f, int s) -> Fiber * {
    if (s < 0 || s > 31 || !lanes[s])
      fiber_fail(fmt("%s (line %d): lane %d reads lane %d, which is not in the mask %08x",
                     op_name(g.op), g.line, f->lane, s, g.mask));
    return lanes[s];
  };
  switch (g.op) {
  case SYNCWARP:
    return;
  case SHFL_IDX:
  case SHFL_XOR:
  case SHFL_UP:
  case SHFL_DOWN:
    for (Fiber *f : lanes) {
      if (!f) continue;
      int w = f->width, base = f->lane & ~(w - 1), s = f->lane;
      switch (g.op) {
      case SHFL_IDX: s = base + (f->a0 & (w - 1)); break;
      case SHFL_XOR: s = f->lane ^ f->a0; if (s >= base + w) s = f->lane; break;
      case SHFL_UP: s = f->lane - f->a0; if (s < base) s = f->lane; break;
      default: s = f->lane + f->a0; if (s >= base + w) s = f->lane; break;
      }
      *(uint64_t *)f->cout = u64_in(src_lane(f, s));
    }
    return;
  case BALLOT:
  case ANY:
  case ALL: {
    unsigned bal = 0;
    for (Fiber *f : lanes)
      if (f && u64_in(f)) bal |= 1u << f->lane;
    uint64_t r = g.op == BALLOT ? bal : g.op == ANY ? (bal != 0) : (bal == g.mask);
    for (Fiber *f : lanes)
      if (f) *(uint64_t *)f->cout = r;
    return;
  }
  case RED_ADD:
  case RED_MIN_U:
  case RED_MAX_U:
  case RED_MIN_S:
  case RED_MAX_S: {
    uint32_t acc = 0;
    bool first = true;
    for (Fiber *f : lanes) {
      if (!f) continue;
      uint32_t v = (uint32_t)u64_in(f);
      if (first) {
        acc = v;
        first = false;
        continue;
      }
      switch (g.op) {
      case RED_ADD: acc += v; break;
      case RED_MIN_U: acc = std::min(acc, v); break;
      case RED_MAX_U: acc = std::max(acc, v); break;
      case RED_MIN_S: acc = (uint32_t)std::min((int32_t)acc, (int32_t)v); break;
      default: acc = (uint32_t)std::max((int32_t)acc, (int32_t)v); break;
      }
    }
    for (Fiber *f : lanes)
      if (f) *(uint64_t *)f->cout = acc;
    return;
  }
  case LDMATRIX_X4:
  case LDMATRIX_X4_T: {
    if (g.mask != 0xffffffffu)
      fiber_fail(fmt("ldmatrix (line %d) needs the full warp, mask %08x", g.line, g.mask));
    // Row r of matrix i comes from the address of lane 8i + r: 8 b16 elements.
    uint16_t m[4][8][8];
    for (int i = 0; i < 4; ++i)
      for (int r = 0; r < 8; ++r) {
        uint32_t addr = *(const uint32_t *)lanes[8 * i + r]->cin;
        if (addr & 15u)
          fiber_fail(fmt("ldmatrix (line %d): lane %d's row address %#x is not 16-byte "
                         "aligned",
                         g.line, 8 * i + r, addr));
        std::memcpy(m[i][r], shared_ptr(addr, 16), 16);
      }
    for (Fiber *f : lanes) {
      uint32_t *out = (uint32_t *)f->cout;
      int t = f->lane;
      for (int i = 0; i < 4; ++i) {
        uint16_t lo, hi;
        if (g.op == LDMATRIX_X4) {
          lo = m[i][t / 4][2 * (t % 4)];
          hi = m[i][t / 4][2 * (t % 4) + 1];
        } else {
          lo = m[i][2 * (t % 4)][t / 4];
          hi = m[i][2 * (t % 4) + 1][t / 4];
        }
        out[i] = (uint32_t)lo | (uint32_t)hi << 16;
      }
    }
    return;
  }
  case MMA_F16:
  case MMA_BF16: {
    if (g.mask != 0xffffffffu)
      fiber_fail(fmt("mma.sync (line %d) needs the full warp, mask %08x", g.line, g.mask));
    // Fragments (PTX ISA, m16n8k16, .row.col): lane = 4 * group + t.
    // A: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..).
    // B: b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g). C/D: c0 (g, 2t), c1 (g, 2t+1),
    // c2 (g+8, 2t), c3 (g+8, 2t+1). The lower half of a register holds the lower index.
    const bool bf = g.op == MMA_BF16;
    float A[16][16], B[16][8], C[16][8];
    for (Fiber *f : lanes) {
      const uint32_t *in = (const uint32_t *)f->cin;  // a[4], b[2], c[4] (f32 bits)
      int gr = f->lane / 4, t = f->lane % 4;
      for (int r = 0; r < 4; ++r) {
        int row = gr + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
        A[row][col] = half_bits_to_f32((uint16_t)in[r], bf);
        A[row][col + 1] = half_bits_to_f32((uint16_t)(in[r] >> 16), bf);
      }
      for (int r = 0; r < 2; ++r) {
        int k = 2 * t + r * 8;
        B[k][gr] = half_bits_to_f32((uint16_t)in[4 + r], bf);
        B[k + 1][gr] = half_bits_to_f32((uint16_t)(in[4 + r] >> 16), bf);
      }
      for (int r = 0; r < 4; ++r) {
        int row = gr + (r >> 1) * 8, col = 2 * t + (r & 1);
        std::memcpy(&C[row][col], &in[6 + r], 4);
      }
    }
    for (Fiber *f : lanes) {
      float *out = (float *)f->cout;
      int gr = f->lane / 4, t = f->lane % 4;
      for (int r = 0; r < 4; ++r) {
        int row = gr + (r >> 1) * 8, col = 2 * t + (r & 1);
        // Products of f16/bf16 values are exact in double; one rounding to f32 at the end.
        double s = C[row][col];
        for (int k = 0; k < 16; ++k) s += (double)A[row][k] * (double)B[k][col];
        out[r] = (float)s;
      }
    }
    return;
  }
  }
}

// ---- shared memory windows and clusters
Block *rank_block(Launch *L, int rank) {
  if (rank < 0 || rank >= (int)L->blocks.size())
    fiber_fail(fmt("cluster rank %d out of range (cluster of %zu blocks)", rank,
                   L->blocks.size()));
  return L->blocks[rank].get();
}

void cluster_thread_exit(Launch *L, Fiber *f) {
  if (L->cl_count > 0 && f->cl_arrived < 0)
    fiber_fail(fmt("exited while %d threads of the cluster wait at a cluster barrier",
                   L->cl_count));
}

void complete_mbar(Launch *L, MBar &m, uint64_t key) {
  m.phase++;
  m.pending = m.expected;
  // Waiters re-check their parity when they run.
  for (auto &b : L->blocks)
    for (Fiber *o : b->fibers)
      if (o->st == St::MbarWait && o->mb_key == key) make_ready(o);
}

uint64_t mbar_key(uint32_t bar) {
  Fiber *f = me();
  uint32_t tag = bar >> kRankShift;
  int rank = tag ? (int)tag - 1 : f->blk->rank;
  if (bar & 7u) fiber_fail(fmt("mbarrier address %#x not 8-byte aligned", bar));
  (void)shared_ptr(bar, 8);  // range check
  return (uint64_t)rank << 32 | (bar & kOffMask);
}

MBar &mbar_get(uint32_t bar, const char *what) {
  Launch *L = launch();
  auto it = L->mbars.find(mbar_key(bar));
  if (it == L->mbars.end())
    fiber_fail(fmt("%s on mbarrier %#x before mbarrier.init", what, bar));
  return it->second;
}

void mbar_tx(uint32_t bar, int64_t delta, uint32_t arrivals) {
  Launch *L = launch();
  uint64_t key = mbar_key(bar);
  MBar &m = mbar_get(bar, "arrive");
  m.tx += delta;
  if (arrivals > m.pending)
    fiber_fail(fmt("mbarrier %#x: more arrivals than its count %u in one phase", bar,
                   m.expected));
  m.pending -= arrivals;
  if (m.pending == 0 && m.tx == 0) complete_mbar(L, m, key);
}

}  // namespace

uint32_t cvta_shared(const void *p) {
  Block *b = me()->blk;
  const char *c = (const char *)p;
  if (c < b->tls || c >= b->tls + b->tls_size)
    fiber_fail("__cvta_generic_to_shared of a pointer outside shared memory");
  return (uint32_t)(c - b->tls);
}

void *shared_ptr(uint32_t addr, unsigned bytes) {
  Fiber *f = me();
  uint32_t tag = addr >> kRankShift, off = addr & kOffMask;
  Block *b = tag ? rank_block(launch(), (int)tag - 1) : f->blk;
  if (b->done)
    fiber_fail(fmt("distributed shared memory access to block rank %d, which has exited",
                   b->rank));
  if ((size_t)off + bytes > b->tls_size)
    fiber_fail(fmt("shared address %#x (+%u bytes) outside shared memory", addr, bytes));
  return b->tls + off;
}

uint32_t mapa(uint32_t addr, uint32_t rank) {
  (void)rank_block(launch(), (int)rank);
  return (addr & kOffMask) | (rank + 1) << kRankShift;
}

uint32_t cluster_rank() { return (uint32_t)me()->blk->rank; }
uint32_t cluster_size() { return (uint32_t)launch()->blocks.size(); }
uint32_t dynamic_smem_size() { return launch()->dyn; }

void cluster_arrive() {
  Launch *L = launch();
  Fiber *f = me();
  if (f->cl_arrived >= 0) fiber_fail("barrier.cluster.arrive twice without a wait");
  f->cl_arrived = L->cl_phase;
  int live = 0;
  for (auto &b : L->blocks) live += (int)b->fibers.size() - b->exited;
  if (++L->cl_count == live) {
    L->cl_count = 0;
    L->cl_phase++;
    for (auto &b : L->blocks)
      for (Fiber *o : b->fibers)
        if (o->st == St::ClusterWait) make_ready(o);
  }
  yield_me();
}

void cluster_wait() {
  Launch *L = launch();
  Fiber *f = me();
  if (f->cl_arrived < 0) fiber_fail("barrier.cluster.wait without an arrive");
  while (L->cl_phase <= f->cl_arrived) block_me(St::ClusterWait);
  f->cl_arrived = -1;
  yield_me();
}

void mbar_init(uint32_t bar, uint32_t count) {
  Launch *L = launch();
  if (count == 0) fiber_fail("mbarrier.init with count 0");
  MBar m;
  m.expected = m.pending = count;
  L->mbars[mbar_key(bar)] = m;
  std::memset(shared_ptr(bar, 8), 0, 8);
}

void mbar_arrive(uint32_t bar, uint32_t tx) {
  mbar_tx(bar, (int64_t)tx, 1);
  yield_me();
}

bool mbar_wait_parity(uint32_t bar, uint32_t parity) {
  Fiber *f = me();
  uint64_t key = mbar_key(bar);
  if (bar >> kRankShift && (int)(bar >> kRankShift) - 1 != f->blk->rank)
    fiber_fail("mbarrier wait on another block's mbarrier");
  for (;;) {
    MBar &m = mbar_get(bar, "try_wait");
    // The phase of parity p has completed when the current phase's parity differs from p.
    if ((m.phase & 1u) != (parity & 1u)) break;
    f->mb_key = key;
    f->mb_parity = parity;
    block_me(St::MbarWait);
  }
  yield_me();
  return true;
}

void st_async(uint32_t addr, const void *src, unsigned bytes, uint32_t bar) {
  Fiber *f = me();
  uint32_t t1 = addr >> kRankShift, t2 = bar >> kRankShift;
  int r1 = t1 ? (int)t1 - 1 : f->blk->rank, r2 = t2 ? (int)t2 - 1 : f->blk->rank;
  if (r1 != r2) fiber_fail("st.async: data and mbarrier in different blocks");
  std::memcpy(shared_ptr(addr, bytes), src, bytes);
  mbar_tx(bar, -(int64_t)bytes, 0);
  yield_me();
}

void cp_async(uint32_t smem, const void *gmem, unsigned bytes, unsigned src_bytes) {
  Fiber *f = me();
  if (smem >> kRankShift) fiber_fail("cp.async to another block's shared memory");
  if ((smem | (uint32_t)(uintptr_t)gmem) & (bytes - 1))
    fiber_fail(fmt("cp.async of %u bytes with misaligned addresses", bytes));
  if (src_bytes > bytes) fiber_fail("cp.async with src-size above cp-size");
  f->cp.push_back(CpCopy{shared_ptr(smem, bytes), gmem, bytes, src_bytes});
  // Until the wait the destination is undefined (the hardware may land the copy at any
  // time): all-ones bytes (NaN), so a stage refilled while another warp still reads it
  // shows up, as well as a read before the wait.
  std::memset(shared_ptr(smem, bytes), 0xff, bytes);
}

void cp_async_commit() {
  Fiber *f = me();
  f->groups.push_back(f->cp.size());
}

void cp_async_wait(int n) {
  Fiber *f = me();
  // Complete every committed group but the newest n.
  size_t keep = std::min((size_t)std::max(n, 0), f->groups.size());
  size_t upto_group = f->groups.size() - keep;
  if (upto_group == 0) return;
  size_t end = f->groups[upto_group - 1];
  for (size_t i = 0; i < end; ++i) {
    CpCopy &c = f->cp[i];
    if (c.src_bytes) std::memcpy(c.dst, c.src, c.src_bytes);
    std::memset((char *)c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
  }
  f->cp.erase(f->cp.begin(), f->cp.begin() + (long)end);
  f->groups.erase(f->groups.begin(), f->groups.begin() + (long)upto_group);
  for (auto &g : f->groups) g -= end;
}

// ---------------------------------------------------------------------------------------
// Scheduler.
namespace {

void poison(char *p, size_t n, uint64_t seed) {
  // Seed-dependent garbage: seed % 3 == 0 gives all-ones bytes (NaN floats, maximal keys),
  // otherwise pseudo-random bytes, so a read before write changes results between seeds.
  if (seed % 3 == 0) {
    std::memset(p, 0xff, n);
    return;
  }
  Rng r{seed * 0x2545f4914f6cdd1dull + 1};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = r.next();
    std::memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) p[i] = (char)r.next();
}

// Prepares the calling OS thread to run block `b`: its shared memory, fibers, warps.
bool setup_block(Launch *L, Block *b, std::vector<Fiber> &store) {
  Worker &w = t_worker;
  w.L = L;
  void *base = nullptr, *dyn = nullptr;
  size_t size = 0;
  L->module_tls(&base, &size, &dyn);
  b->tls = (char *)base;
  b->tls_size = size;
  b->dyn = (char *)dyn;
  if (!base || !dyn || (char *)dyn < b->tls || (char *)dyn + kMaxDyn > b->tls + size) {
    L->fail("the kernel module's thread_local shared memory could not be located");
    return false;
  }
#if defined(MIAD_ASAN)
  __asan_unpoison_memory_region(b->tls, size);
#endif
  // Everything a kernel may read: the static shared memory and the launch's dynamic
  // shared memory. The rest of the 227 KiB window is out of bounds (ASan-poisoned below in
  // instrumented builds) and filling it with garbage for every block cost more than most
  // blocks' work.
  uint64_t seed = L->poison_seed + (uint64_t)b->rank * 7919;
  char *window_end = b->dyn + kMaxDyn;
  poison(b->tls, (size_t)(b->dyn + L->dyn - b->tls), seed);
  poison(window_end, (size_t)(b->tls + size - window_end), seed + 1);
#if defined(MIAD_ASAN)
  // Dynamic shared memory beyond what the launch gave is out of bounds.
  __asan_poison_memory_region(b->dyn + L->dyn, kMaxDyn - L->dyn);
#endif
  int n = L->nthreads;
  if (w.dirty) {
#if defined(MIAD_ASAN)
    for (char *s : w.stacks) __asan_unpoison_memory_region(s, kStack);
#endif
    w.dirty = false;
  }
  store.assign((size_t)n, Fiber());
  b->fibers.resize((size_t)n);
  b->runnable.clear();
  t_warps.assign((size_t)(n + 31) / 32, WarpState());
  b->warp_exited.assign((size_t)(n + 31) / 32, 0u);
  int i = 0;
  for (unsigned z = 0; z < L->block.z; ++z)
    for (unsigned y = 0; y < L->block.y; ++y)
      for (unsigned x = 0; x < L->block.x; ++x, ++i) {
        Fiber &f = store[(size_t)i];
        f.view = ThreadView{uint3{x, y, z}, b->bid, L->block, L->grid};
        f.linear = i;
        f.lane = i & 31;
        f.warp = i >> 5;
        f.blk = b;
        char *stack = w.stack((size_t)i);
        if (!stack) {
          L->fail("out of memory for fiber stacks");
          return false;
        }
        init_fiber(&f, stack);
        b->fibers[(size_t)i] = &f;
        b->runnable.push_back(&f);
      }
  return true;
}

// Runs the block's ready fibers, in seeded random order, until none is ready.
void run_ready(Launch *L, Block *b) {
  Worker &w = t_worker;
  while (!b->runnable.empty() && !L->failed()) {
    size_t k = 0;
    if (L->order == 0) {
      k = L->rng.below(b->runnable.size());
    } else {
      for (size_t i = 1; i < b->runnable.size(); ++i)
        if ((b->runnable[i]->linear < b->runnable[k]->linear) == (L->order == 1)) k = i;
    }
    Fiber *f = b->runnable[k];
    b->runnable[k] = b->runnable.back();
    b->runnable.pop_back();
    switch_to_fiber(w, f);
  }
  if ((int)b->exited == (int)b->fibers.size()) {
    b->done = true;
  }
}

std::string describe_stuck(Launch *L) {
  std::string s = "deadlock: no thread can make progress.";
  for (auto &b : L->blocks) {
    int counts[7] = {};
    int line_w = 0;
    for (Fiber *f : b->fibers) {
      counts[(int)f->st]++;
      if (f->st == St::Warp) line_w = f->line;
    }
    s += fmt(" [block (%u,%u,%u): %d at __syncthreads (line %d), %d in warp collectives "
             "(line %d), %d at a cluster barrier, %d waiting on an mbarrier, %d exited]",
             b->bid.x, b->bid.y, b->bid.z, counts[(int)St::Barrier], b->bar_line,
             counts[(int)St::Warp], line_w, counts[(int)St::ClusterWait],
             counts[(int)St::MbarWait], counts[(int)St::Done]);
  }
  return s;
}

// Picks the next rank to run: a random block with ready fibers. -1: none.
int pick_next(Launch *L) {
  std::vector<int> ready;
  for (auto &b : L->blocks)
    if (!b->runnable.empty()) ready.push_back(b->rank);
  if (ready.empty()) return -1;
  return ready[L->rng.below(ready.size())];
}

// The loop of the OS thread that runs rank `rank` of a cluster. Holds the baton while
// running; hands it on when its block has nothing ready.
void worker_loop(Launch *L, int rank, std::vector<Fiber> *store, bool *ok) {
  Block *b = L->blocks[(size_t)rank].get();
  std::unique_lock<std::mutex> lk(L->mu);
  // Setup happens in order: rank r sets up when the baton says so.
  L->cv.wait(lk, [&] { return L->active == rank || L->finished; });
  if (L->finished) return;
  lk.unlock();
  *ok = setup_block(L, b, *store);
  lk.lock();
  if (!*ok) {
    L->finished = true;
    L->cv.notify_all();
    return;
  }
  // Hand the setup baton to the next rank; the last one starts the run.
  if (rank + 1 < (int)L->blocks.size()) {
    L->active = rank + 1;
  } else {
    int next = pick_next(L);
    L->active = next;
  }
  L->cv.notify_all();
  for (;;) {
    L->cv.wait(lk, [&] { return L->active == rank || L->finished; });
    if (L->finished) return;
    lk.unlock();
    t_worker.L = L;
    run_ready(L, b);
    lk.lock();
    if (L->failed()) {
      L->finished = true;
      L->cv.notify_all();
      return;
    }
    int next = pick_next(L);
    if (next < 0) {
      bool all_done = true;
      for (auto &x : L->blocks) {
        if ((int)x->exited != (int)x->fibers.size()) all_done = false;
      }
      if (!all_done) L->fail(describe_stuck(L));
      L->finished = true;
      L->cv.notify_all();
      return;
    }
    L->active = next;
    L->cv.notify_all();
  }
}

void run_cluster(Launch *L, const std::vector<uint3> &bids) {
  L->blocks.clear();
  L->mbars.clear();
  L->cl_phase = 0;
  L->cl_count = 0;
  for (size_t r = 0; r < bids.size(); ++r) {
    auto b = std::make_unique<Block>();
    b->L = L;
    b->rank = (int)r;
    b->bid = bids[r];
    L->blocks.push_back(std::move(b));
  }
  std::vector<std::vector<Fiber>> stores(bids.size());
  if (bids.size() == 1) {
    Block *b = L->blocks[0].get();
    if (!setup_block(L, b, stores[0])) return;
    run_ready(L, b);
    if (!L->failed() && b->exited != (int)b->fibers.size()) L->fail(describe_stuck(L));
    return;
  }
  L->active = 0;
  L->finished = false;
  std::unique_ptr<bool[]> oks(new bool[bids.size()]());
  std::vector<std::thread> threads;
  for (size_t r = 1; r < bids.size(); ++r)
    threads.emplace_back(worker_loop, L, (int)r, &stores[r], &oks[r]);
  worker_loop(L, 0, &stores[0], &oks[0]);
  for (auto &t : threads) t.join();
}

__attribute__((tls_model("initial-exec"))) thread_local Launch *t_report_launch = nullptr;

#if defined(MIAD_ASAN)
void asan_report(const char *report) {
  Launch *L = t_worker.L ? t_worker.L : t_report_launch;
  if (L) L->fail(std::string("AddressSanitizer: ") + report);
}
#endif

}  // namespace
}  // namespace miad_sim

// ---------------------------------------------------------------------------------------
// C ABI.
extern "C" {

// Launches `fn` (a registration trampoline: void(void **args)) like cuLaunchKernelEx.
// Returns 0, or 1 with a message in err (NUL-terminated, truncated to err_len).
__attribute__((visibility("default"))) int miad_sim_launch(
    void (*fn)(void **), void (*module_tls)(void **, size_t *, void **), const unsigned *grid,
    const unsigned *block, const unsigned *cluster, unsigned dyn_smem, void **args,
    unsigned long long seed, char *err, size_t err_len) {
  using namespace miad_sim;
  Launch L;
  L.fn = fn;
  L.args = args;
  L.module_tls = module_tls;
  L.grid = dim3{grid[0], grid[1], grid[2]};
  L.block = dim3{block[0], block[1], block[2]};
  L.cluster = dim3{cluster[0], cluster[1], cluster[2]};
  L.dyn = dyn_smem;
  L.rng = Rng{seed * 0x9e3779b97f4a7c15ull + 12345};
  L.poison_seed = seed;
  L.order = (int)((seed >> 32) & 3) % 3;
  auto fail_now = [&](const std::string &m) {
    snprintf(err, err_len, "%s", m.c_str());
    return 1;
  };
  long nthreads = (long)L.block.x * L.block.y * L.block.z;
  if (nthreads < 1 || nthreads > 1024) return fail_now(fmt("block of %ld threads", nthreads));
  if (dyn_smem > kMaxDyn) return fail_now(fmt("dynamic shared memory %u > %u", dyn_smem, kMaxDyn));
  for (int d = 0; d < 3; ++d) {
    unsigned g = d == 0 ? L.grid.x : d == 1 ? L.grid.y : L.grid.z;
    unsigned c = d == 0 ? L.cluster.x : d == 1 ? L.cluster.y : L.cluster.z;
    if (g == 0 || c == 0 || g % c != 0)
      return fail_now(fmt("grid %u not a multiple of the cluster %u (dimension %d)", g, c, d));
  }
  long cl = (long)L.cluster.x * L.cluster.y * L.cluster.z;
  if (cl > 16) return fail_now(fmt("cluster of %ld blocks (at most 16)", cl));
  L.nthreads = (int)nthreads;
  L.cl_blocks = (int)cl;
  Worker &w = t_worker;
  Launch *saved_l = w.L;
  t_report_launch = &L;
#if defined(MIAD_ASAN)
  static std::once_flag once;
  std::call_once(once, [] { __asan_set_error_report_callback(asan_report); });
#endif
  // Clusters in a seeded random order; within a cluster, rank order = block order.
  unsigned ncx = L.grid.x / L.cluster.x, ncy = L.grid.y / L.cluster.y,
           ncz = L.grid.z / L.cluster.z;
  std::vector<uint3> cls;
  for (unsigned z = 0; z < ncz; ++z)
    for (unsigned y = 0; y < ncy; ++y)
      for (unsigned x = 0; x < ncx; ++x) cls.push_back(uint3{x, y, z});
  for (size_t i = cls.size(); i > 1; --i) std::swap(cls[i - 1], cls[L.rng.below(i)]);
  for (const uint3 &c : cls) {
    std::vector<uint3> bids;
    for (unsigned z = 0; z < L.cluster.z; ++z)
      for (unsigned y = 0; y < L.cluster.y; ++y)
        for (unsigned x = 0; x < L.cluster.x; ++x)
          bids.push_back(uint3{c.x * L.cluster.x + x, c.y * L.cluster.y + y,
                               c.z * L.cluster.z + z});
    run_cluster(&L, bids);
    if (L.failed()) break;
  }
  w.L = saved_l;
  t_report_launch = nullptr;
  if (L.failed()) return fail_now(L.error);
  if (err_len) err[0] = 0;
  return 0;
}
}
