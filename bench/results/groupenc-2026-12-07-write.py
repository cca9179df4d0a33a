# Usage: W=DIR python3 groupenc-2026-12-07-write.py map pwrite map pwrite: writes 12 parts of
# 41 MB (one d60 part's features) into a fresh sparse file in DIR through a shared map or
# with pwrite, then reads them back through the map; prints wall, user and sys per part.
import mmap, os, time, resource, sys
part = 41 * 1024 * 1024 // 4 * 4
parts = 12
buf = os.urandom(1024*1024) * 41
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime, r.ru_stime
for mode in sys.argv[1:]:
    path = os.path.join(os.environ.get("W", "/tmp"), f"wb-{mode}")
    with open(path, "w+b") as f:
        f.truncate(part * parts)
        m = mmap.mmap(f.fileno(), part * parts)
        u0, s0 = cpu(); t0 = time.time()
        for p in range(parts):
            if mode == "map":
                m[p*part:(p+1)*part] = buf
            else:
                os.pwrite(f.fileno(), buf, p*part)
        t1 = time.time(); u1, s1 = cpu()
        # read back through the map, as the fit does
        chk = sum(m[p*part] for p in range(parts))
        m.close()
    os.remove(path)
    print(f"{mode}: {parts} parts of 41 MB: wall {(t1-t0)/parts*1e3:.1f} ms/part, user {(u1-u0)/parts*1e3:.1f} ms/part, sys {(s1-s0)/parts*1e3:.1f} ms/part")
