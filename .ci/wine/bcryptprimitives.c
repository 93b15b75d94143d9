/* A stand-in for Windows' bcryptprimitives.dll, for Wine 8.0 only (Debian 12), which lacks
 * it. Rust's standard library (1.78+) takes its random bytes from ProcessPrng, which every
 * Windows since 8 exports from this DLL; here it is served by RtlGenRandom
 * (advapi32!SystemFunction036), which Wine has. Never shipped: .ci/setup installs it into
 * the test Wine prefix. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
