// Included by the generated registration file of a kernel module (after the .cu file):
// turns a cuLaunchKernel-style `void **args` into a typed call, and reports the argument
// sizes so the launcher can check them.
#pragma once
#include <cstddef>
#include <tuple>
#include <utility>

namespace miad_sim {
template <class... A, size_t... I>
inline void invoke_impl(void (*f)(A...), void **args, std::index_sequence<I...>) {
  f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>> *>(args[I])...);
}
template <class... A> inline void invoke(void (*f)(A...), void **args) {
  invoke_impl(f, args, std::index_sequence_for<A...>{});
}
template <class... A> inline int arg_sizes(void (*)(A...), size_t *out, int cap) {
  const size_t s[] = {sizeof(A)..., 0};
  for (int i = 0; i < (int)sizeof...(A) && i < cap; ++i) out[i] = s[i];
  return (int)sizeof...(A);
}
}  // namespace miad_sim

// One kernel: `miad_sim_k_<name>` launches it, `miad_sim_a_<name>` gives its argument
// sizes and `miad_sim_b_<name>` the __launch_bounds__ maximum (0: none).
#define MIAD_SIM_KERNEL(name, bounds)                                                      \
  extern "C" __attribute__((visibility("default"))) void miad_sim_k_##name(void **a) {     \
    miad_sim::invoke(name, a);                                                             \
  }                                                                                        \
  extern "C" __attribute__((visibility("default"))) int miad_sim_a_##name(size_t *o,       \
                                                                          int cap) {       \
    return miad_sim::arg_sizes(name, o, cap);                                              \
  }                                                                                        \
  extern "C" __attribute__((visibility("default"))) int miad_sim_b_##name() { return bounds; }
