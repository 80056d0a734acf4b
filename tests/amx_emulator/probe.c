/*
 * Exercises tests/amx_emulator with the compiler's own AMX intrinsics, so the tests can hold the emulator to
 * the hardware's rules and to NumPy's arithmetic.
 *
 *   probe dot       A (16x64 int8, row stride 80), B (16x64 int8) and C = TDPBSSD(A, B) then TDPBUSD(A, B)
 *                   accumulated into D, written raw to stdout
 *   probe no-permission | unconfigured | bad-config    break one rule; the process must die for it
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define STRIDE_A 80

/* Volatile, so that every byte reaches memory before LDTILECFG (GCC's intrinsic declares it reads 8 bytes). */
static void load_config(uint8_t palette, uint8_t a_rows) {
    static volatile uint8_t config[64] __attribute__((aligned(64)));
    memset((void *)config, 0, sizeof config);
    config[0] = palette;
    for (int t = 0; t < 4; t++) {
        config[16 + 2 * t] = 64;
        config[48 + t] = t == 0 ? a_rows : 16;
    }
    _tile_loadconfig((const void *)config);
}

int main(int argc, char **argv) {
    static int8_t a[16][STRIDE_A], b[16][64];
    static int32_t c[16][16], d[16][16];
    const char *mode = argc > 1 ? argv[1] : "dot";
    uint32_t x = 12345;
    for (int r = 0; r < 16; r++) {
        for (int i = 0; i < STRIDE_A; i++) a[r][i] = (int8_t)((x = x * 1103515245u + 12345u) >> 24);
        for (int i = 0; i < 64; i++) b[r][i] = (int8_t)((x = x * 1103515245u + 12345u) >> 24);
    }
    if (strcmp(mode, "no-permission") != 0) syscall(SYS_arch_prctl, 0x1023, 18);
    if (strcmp(mode, "bad-config") == 0) load_config(1, 17);
    if (strcmp(mode, "unconfigured") != 0) load_config(1, 16);
    _tile_loadd(0, a, STRIDE_A);
    _tile_loadd(1, b, 64);
    _tile_zero(2);
    _tile_dpbssd(2, 0, 1);
    _tile_stored(2, c, 64);
    _tile_zero(3);
    _tile_dpbusd(3, 0, 1);
    _tile_dpbusd(3, 0, 1);
    _tile_stored(3, d, 64);
    _tile_release();
    fwrite(a, 1, sizeof a, stdout);
    fwrite(b, 1, sizeof b, stdout);
    fwrite(c, 1, sizeof c, stdout);
    fwrite(d, 1, sizeof d, stdout);
    return 0;
}
