// miad's SIMT emulator, device side: force-included (g++ -include simt.h) before a
// kernels/*.cu file so that g++ compiles the CUDA source unmodified for the CPU.
//
// Every CUDA thread is a fiber; the runtime (simt.cpp, libmiadsim.so) schedules them in a
// seeded random order and switches at every barrier, warp collective, atomic and fence.
// Shared memory is thread_local storage: each block runs on its own OS thread's copy (the
// blocks of a cluster run together, each on its own OS thread, one at a time), and the
// runtime poisons it when a block starts. See README.md for what is and is not modelled.
#pragma once
#define MIAD_SIM 1
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Per block: a block's threads all run on one OS thread (see above).
#define __shared__ thread_local

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
#define MIAD_SIM_VEC(T, N2, N4)                                                          \
  struct N2 {                                                                            \
    T x, y;                                                                              \
  };                                                                                     \
  struct __attribute__((aligned(sizeof(T) * 4))) N4 {                                    \
    T x, y, z, w;                                                                        \
  };                                                                                     \
  inline N2 make_##N2(T x, T y) { return N2{x, y}; }                                     \
  inline N4 make_##N4(T x, T y, T z, T w) { return N4{x, y, z, w}; }
MIAD_SIM_VEC(float, float2, float4)
MIAD_SIM_VEC(unsigned, uint2, uint4)
MIAD_SIM_VEC(int, int2, int4)
#undef MIAD_SIM_VEC
struct float3 {
  float x, y, z;
};
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }

namespace miad_sim {

// What a fiber sees of itself; the runtime keeps one per CUDA thread.
struct ThreadView {
  uint3 tid;
  uint3 bid;
  dim3 bdim;
  dim3 gdim;
};
const ThreadView *current();

[[noreturn]] void trap(const char *what);
void syncthreads(int line);
void syncwarp(unsigned mask, int line);
// Warp collectives. `kind` is one of the Op values; in/out point into the calling fiber's
// stack, valid while it waits; a0 is the per-lane argument (source lane, xor mask, delta).
enum Op : int {
  SHFL_IDX,
  SHFL_XOR,
  SHFL_UP,
  SHFL_DOWN,
  BALLOT,
  ANY,
  ALL,
  RED_ADD,
  RED_MIN_U,
  RED_MAX_U,
  RED_MIN_S,
  RED_MAX_S,
  LDMATRIX_X4,
  LDMATRIX_X4_T,
  MMA_F16,
  MMA_BF16,
  SYNCWARP,
};
void collective(Op kind, unsigned mask, const void *in, void *out, int a0, int width, int line);
// A point where other fibers may run (atomics, fences).
void yield();

// Shared-memory windows: 32-bit shared addresses as PTX sees them.
uint32_t cvta_shared(const void *p);
void *shared_ptr(uint32_t addr, unsigned bytes);  // own block or a cluster peer (mapa'd)
uint32_t mapa(uint32_t addr, uint32_t rank);
uint32_t cluster_rank();
uint32_t cluster_size();
uint32_t dynamic_smem_size();
void cluster_arrive();
void cluster_wait();
void mbar_init(uint32_t bar, uint32_t count);
void mbar_arrive(uint32_t bar, uint32_t tx_bytes_expected);
bool mbar_wait_parity(uint32_t bar, uint32_t parity);
void st_async(uint32_t addr, const void *src, unsigned bytes, uint32_t bar);
void cp_async(uint32_t smem, const void *gmem, unsigned bytes, unsigned src_bytes);
void cp_async_commit();
void cp_async_wait(int n);

template <class T> inline T atomic_rmw(T *p, T v, int op) {
  yield();
  T old = *p;
  switch (op) {
  case 0: *p = old + v; break;
  case 1: *p = v < old ? v : old; break;
  case 2: *p = v > old ? v : old; break;
  case 3: *p = v; break;
  case 4: *p = old | v; break;
  case 5: *p = old & v; break;
  }
  return old;
}

template <class T> inline T bits_as(const void *p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace miad_sim

#define threadIdx (miad_sim::current()->tid)
#define blockIdx (miad_sim::current()->bid)
#define blockDim (miad_sim::current()->bdim)
#define gridDim (miad_sim::current()->gdim)
#define warpSize 32
#define __syncthreads() miad_sim::syncthreads(__LINE__)
#define __syncwarp(...) miad_sim::syncwarp(miad_sim_mask_or_full(__VA_ARGS__), __LINE__)
inline unsigned miad_sim_mask_or_full(unsigned m = 0xffffffffu) { return m; }
inline void __trap() { miad_sim::trap("__trap() called"); }
inline void __threadfence() { miad_sim::yield(); }
inline void __threadfence_block() { miad_sim::yield(); }

// ---- integer and bit intrinsics
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __float_as_uint(float f) { return miad_sim::bits_as<unsigned>(&f); }
inline int __float_as_int(float f) { return miad_sim::bits_as<int>(&f); }
inline float __uint_as_float(unsigned u) { return miad_sim::bits_as<float>(&u); }
inline float __int_as_float(int u) { return miad_sim::bits_as<float>(&u); }
inline long long __double_as_longlong(double d) { return miad_sim::bits_as<long long>(&d); }
inline double __longlong_as_double(long long u) { return miad_sim::bits_as<double>(&u); }

// CUDA's min/max overloads: the usual arithmetic conversions, as in device code.
template <class A, class B> inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B> inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return (C)a < (C)b ? (C)b : (C)a;
}

// ---- floating point with the device's rounding (g++ -ffp-contract=off: no contraction)
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __double2float_rn(double a) { return (float)a; }
inline float __int2float_rn(int a) { return (float)a; }
using std::erf;
using std::fma;
// CUDA declares the classification functions in the global namespace (<cmath>: std::).
using std::isfinite;
using std::isinf;
using std::isnan;

template <class T> inline T __ldg(const T *p) { return *p; }
template <class T> inline T __ldcg(const T *p) { return *p; }
template <class T> inline T __ldcs(const T *p) { return *p; }
template <class T> inline void __stcg(T *p, T v) { *p = v; }

// ---- f16 / bf16 storage types with round-to-nearest-even conversions
struct __half {
  unsigned short x;
};
struct __half2 {
  __half x, y;
};
struct __nv_bfloat16 {
  unsigned short x;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
namespace miad_sim {
inline unsigned short f32_to_bf16(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}
inline float bf16_to_f32(unsigned short h) { return __uint_as_float((unsigned)h << 16); }
inline unsigned short f32_to_f16(float f) {
  unsigned u = __float_as_uint(f);
  unsigned sign = (u >> 16) & 0x8000u;
  unsigned a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);
  if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {                                           // f16 subnormal or zero
    // value = a as float; the subnormal unit is 2^-24: round(value * 2^24) to even.
    float v = __uint_as_float(a) * 16777216.0f;  // exact: power-of-two scaling
    float r = std::nearbyint(v);                 // default rounding mode: to nearest even
    return (unsigned short)(sign | (unsigned)r);
  }
  unsigned mant = a & 0x7fffffu, e = (a >> 23) - 112;  // rebias 127 -> 15
  unsigned h = (e << 10) | (mant >> 13);
  unsigned rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return (unsigned short)(sign | h);
}
inline float f16_to_f32(unsigned short h) {
  unsigned sign = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) return (sign ? -1.f : 1.f) * (float)m * 5.9604644775390625e-08f;  // m * 2^-24
  if (e == 31) return __uint_as_float(sign | 0x7f800000u | (m << 13));
  return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
}
}  // namespace miad_sim
inline __half __float2half_rn(float f) { return __half{miad_sim::f32_to_f16(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return miad_sim::f16_to_f32(h.x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __nv_bfloat16{miad_sim::f32_to_bf16(f)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return miad_sim::bf16_to_f32(h.x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline __half2 __floats2half2_rn(float lo, float hi) {
  return __half2{__float2half_rn(lo), __float2half_rn(hi)};
}

// ---- warp collectives
namespace miad_sim {
template <class T> inline T shfl(Op op, unsigned mask, T v, int a0, int width, int line) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  unsigned long long in = 0, out = 0;
  std::memcpy(&in, &v, sizeof(T));
  collective(op, mask, &in, &out, a0, width, line);
  T r;
  std::memcpy(&r, &out, sizeof(T));
  return r;
}
inline unsigned vote(Op op, unsigned mask, unsigned v, int line) {
  unsigned long long in = v, out = 0;
  collective(op, mask, &in, &out, 0, 32, line);
  return (unsigned)out;
}
}  // namespace miad_sim
#define __shfl_sync(m, v, l, ...) \
  miad_sim::shfl(miad_sim::SHFL_IDX, m, v, l, miad_sim_width(__VA_ARGS__), __LINE__)
#define __shfl_xor_sync(m, v, l, ...) \
  miad_sim::shfl(miad_sim::SHFL_XOR, m, v, l, miad_sim_width(__VA_ARGS__), __LINE__)
#define __shfl_up_sync(m, v, l, ...) \
  miad_sim::shfl(miad_sim::SHFL_UP, m, v, l, miad_sim_width(__VA_ARGS__), __LINE__)
#define __shfl_down_sync(m, v, l, ...) \
  miad_sim::shfl(miad_sim::SHFL_DOWN, m, v, l, miad_sim_width(__VA_ARGS__), __LINE__)
inline int miad_sim_width(int w = 32) { return w; }
#define __ballot_sync(m, p) miad_sim::vote(miad_sim::BALLOT, m, (p) ? 1u : 0u, __LINE__)
#define __any_sync(m, p) (miad_sim::vote(miad_sim::ANY, m, (p) ? 1u : 0u, __LINE__) != 0u)
#define __all_sync(m, p) (miad_sim::vote(miad_sim::ALL, m, (p) ? 1u : 0u, __LINE__) != 0u)
namespace miad_sim {
inline unsigned reduce(Op op, unsigned mask, unsigned v, int line) {
  return vote(op, mask, v, line);
}
}  // namespace miad_sim
inline unsigned miad_sim_reduce_add(unsigned m, unsigned v, int l) {
  return miad_sim::reduce(miad_sim::RED_ADD, m, v, l);
}
inline int miad_sim_reduce_add(unsigned m, int v, int l) {
  return (int)miad_sim::reduce(miad_sim::RED_ADD, m, (unsigned)v, l);
}
inline unsigned miad_sim_reduce_min(unsigned m, unsigned v, int l) {
  return miad_sim::reduce(miad_sim::RED_MIN_U, m, v, l);
}
inline int miad_sim_reduce_min(unsigned m, int v, int l) {
  return (int)miad_sim::reduce(miad_sim::RED_MIN_S, m, (unsigned)v, l);
}
inline unsigned miad_sim_reduce_max(unsigned m, unsigned v, int l) {
  return miad_sim::reduce(miad_sim::RED_MAX_U, m, v, l);
}
inline int miad_sim_reduce_max(unsigned m, int v, int l) {
  return (int)miad_sim::reduce(miad_sim::RED_MAX_S, m, (unsigned)v, l);
}
#define __reduce_add_sync(m, v) miad_sim_reduce_add(m, v, __LINE__)
#define __reduce_min_sync(m, v) miad_sim_reduce_min(m, v, __LINE__)
#define __reduce_max_sync(m, v) miad_sim_reduce_max(m, v, __LINE__)

// ---- atomics (one fiber runs at a time; each atomic is a scheduling point)
template <class T> inline T atomicAdd(T *p, T v) { return miad_sim::atomic_rmw(p, v, 0); }
template <class T> inline T atomicMin(T *p, T v) { return miad_sim::atomic_rmw(p, v, 1); }
template <class T> inline T atomicMax(T *p, T v) { return miad_sim::atomic_rmw(p, v, 2); }
template <class T> inline T atomicExch(T *p, T v) { return miad_sim::atomic_rmw(p, v, 3); }
template <class T> inline T atomicOr(T *p, T v) { return miad_sim::atomic_rmw(p, v, 4); }
template <class T> inline T atomicAnd(T *p, T v) { return miad_sim::atomic_rmw(p, v, 5); }
template <class T> inline T atomicCAS(T *p, T cmp, T v) {
  miad_sim::yield();
  T old = *p;
  if (old == cmp) *p = v;
  return old;
}

// ---- address spaces
inline size_t __cvta_generic_to_shared(const void *p) { return miad_sim::cvta_shared(p); }
