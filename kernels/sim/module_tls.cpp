// Linked into every kernel module: the dynamic shared memory window and the location of
// the module's thread_local block (= its shared memory) in the calling OS thread.
// The generated build defines MIAD_SIM_DYN_ALIASES as a list of
// `MIAD_SIM_DYN(name)` for every `extern __shared__` array of the module.
#include <dlfcn.h>
#include <link.h>

#include <cstddef>
#include <cstdint>

alignas(256) thread_local unsigned char miad_sim_dyn_window[232448];

#define MIAD_SIM_DYN(name) \
  extern thread_local unsigned char name[232448] __attribute__((alias("miad_sim_dyn_window")));
#ifdef MIAD_SIM_DYN_ALIASES
MIAD_SIM_DYN_ALIASES
#endif

// The TLS init function of each alias (`_ZTH<name>`), a no-op: the window needs no dynamic
// initialisation. Kernel code reaches an `extern thread_local` through a wrapper that
// calls it only when the weak symbol exists, but g++ -O2 without sanitizers may hoist the
// call out of that check (seen in fps.cu), which then jumps to address 0.
#define MIAD_SIM_TLS_INIT(sym) extern "C" __attribute__((visibility("default"))) void sym() {}
#ifdef MIAD_SIM_DYN_INITS
MIAD_SIM_DYN_INITS
#endif

namespace {
struct Find {
  uintptr_t addr;
  size_t tls_size;
  bool found;
};
int find_tls(struct dl_phdr_info *info, size_t, void *data) {
  Find *f = (Find *)data;
  bool mine = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr) &p = info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + p.p_vaddr;
    if (p.p_type == PT_LOAD && f->addr >= lo && f->addr < lo + p.p_memsz) mine = true;
  }
  if (!mine) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i)
    if (info->dlpi_phdr[i].p_type == PT_TLS) f->tls_size = info->dlpi_phdr[i].p_memsz;
  f->found = true;
  return 1;
}
}  // namespace

extern "C" __attribute__((visibility("default"))) void miad_sim_module_tls(void **base,
                                                                           size_t *size,
                                                                           void **dyn) {
  *dyn = miad_sim_dyn_window;  // also makes sure this thread's block is allocated
  *base = nullptr;
  *size = 0;
  Dl_info info;
  if (!dladdr((void *)&miad_sim_module_tls, &info)) return;
  void *h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
  if (!h) return;
  void *tls = nullptr;
  if (dlinfo(h, RTLD_DI_TLS_DATA, &tls) == 0) *base = tls;
  dlclose(h);
  Find f{(uintptr_t)&miad_sim_module_tls, 0, false};
  dl_iterate_phdr(find_tls, &f);
  *size = f.tls_size;
}
