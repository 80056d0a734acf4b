/*
 * A software AMX unit, so that llama.cpp's AMX build can run (slowly) on x86-64 CPUs without AMX, in tests.
 *
 * Loaded with LD_PRELOAD. On a CPU without AMX every tile instruction raises #UD (SIGILL); this library's SIGILL
 * handler decodes the instruction at the faulting address, carries it out on a per-thread software tile file
 * and resumes after it. The machine code that runs is the build's own, compiled with the real AMX intrinsics,
 * so what the compiler made of them (the tile configuration it hands to LDTILECFG, for one) is what is tested.
 *
 * It enforces the rules the hardware and Linux enforce, and dies the way they make a process die:
 *   - no tile instruction before the process was granted XTILEDATA (arch_prctl ARCH_REQ_XCOMP_PERM): SIGILL;
 *   - LDTILECFG of a malformed configuration (palette > 1, reserved bytes set, rows > 16, colsb > 64, shapes
 *     for tiles beyond tmm7): SIGSEGV, as for #GP;
 *   - a tile used while the thread has no configuration, or one the configuration leaves empty, or TDPB*
 *     operands whose shapes do not fit together: SIGILL, as for #UD.
 * The kernel of this CPU refuses XTILEDATA, so arch_prctl(ARCH_REQ_XCOMP_PERM, 18) made through libc's
 * syscall() is answered here (granted, process-wide, as Linux does); every other syscall() goes to libc.
 *
 * Instructions: LDTILECFG, STTILECFG, TILERELEASE, TILEZERO, TILELOADD, TILELOADDT1, TILESTORED,
 * TDPBSSD/TDPBSUD/TDPBUSD/TDPBUUD (what ggml's int8 AMX kernels use) and TDPBF16PS (the tiled flash attention's
 * products, stack/patches/ggml-cpu-flash-attn-amx.patch). Anything else is left to fault.
 *
 * AMX_EMULATOR_REPORT=FILE: at exit, each process that asked for XTILEDATA or ran a tile instruction appends a
 * line of JSON to FILE with its counts of what was emulated (tests assert that tiles ran, and in which threads).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
enum { TILES = 8, MAX_ROWS = 16, MAX_COLSB = 64, SLOTS = 1024 };

struct tile_file {
    atomic_int tid;  /* the thread owning this slot; 0: free */
    int configured;  /* palette 1 loaded and not released */
    uint8_t rows[TILES];
    uint16_t colsb[TILES];
    uint8_t data[TILES][MAX_ROWS][MAX_COLSB];
};

static struct tile_file files[SLOTS];
static atomic_int permitted;
static atomic_long n_ldtilecfg, n_tileloadd, n_tilestored, n_tilezero, n_tdpb, n_tdpbf16ps, n_release, n_threads,
    n_grants;
static const char *report_path;
static const int gregs_of[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
                                 REG_R8,  REG_R9,  REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15};

static struct tile_file *this_thread(void) {
    int tid = gettid();
    for (unsigned i = 0; i < SLOTS; i++) {
        struct tile_file *f = &files[((unsigned)tid + i) % SLOTS];
        int expected = 0;
        if (atomic_load(&f->tid) == tid) return f;
        if (atomic_compare_exchange_strong(&f->tid, &expected, tid)) {
            atomic_fetch_add(&n_threads, 1);
            return f;
        }
        if (expected == tid) return f;
    }
    return NULL;
}

static void say(const char *what, uintptr_t rip) {
    char line[256];
    int n = snprintf(line, sizeof line, "amx-emulator: %s (at %#lx)\n", what, (unsigned long)rip);
    if (n > 0) (void)!write(STDERR_FILENO, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* Die as the hardware would have made the process die: the instruction runs again without the handler. */
static void fault(int sig, const char *what, uintptr_t rip) {
    say(what, rip);
    signal(SIGILL, SIG_DFL);
    if (sig != SIGILL) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

static int tile_ok(const struct tile_file *f, int t) {
    return f->configured && t < TILES && f->rows[t] && f->colsb[t];
}

/* The #UD a tile instruction raises when a tile it names is unusable, and why. */
static void unusable_tile(const struct tile_file *f, const char *instruction, int t, uintptr_t rip) {
    char what[160];
    if (!f->configured)
        snprintf(what, sizeof what, "%s with no tile configuration loaded in this thread (#UD)", instruction);
    else
        snprintf(what, sizeof what, "%s names tmm%d, which the loaded tile configuration leaves empty (#UD)",
                 instruction, t);
    fault(SIGILL, what, rip);
}

static int load_config(struct tile_file *f, const uint8_t *m) {
    uint8_t palette = m[0];
    for (int i = 2; i < 16; i++)
        if (m[i]) return 0;
    if (palette > 1) return 0;
    memset(f->data, 0, sizeof f->data);
    memset(f->rows, 0, sizeof f->rows);
    memset(f->colsb, 0, sizeof f->colsb);
    f->configured = palette == 1;
    if (!f->configured) return 1;
    for (int t = 0; t < 16; t++) {
        uint16_t colsb;
        memcpy(&colsb, m + 16 + 2 * t, 2);
        uint8_t rows = m[48 + t];
        if (t >= TILES ? (rows || colsb) : (rows > MAX_ROWS || colsb > MAX_COLSB)) return 0;
        if (t < TILES) {
            f->rows[t] = rows;
            f->colsb[t] = colsb;
        }
    }
    return 1;
}

static void store_config(const struct tile_file *f, uint8_t *m) {
    memset(m, 0, 64);
    if (!f->configured) return;
    m[0] = 1;
    for (int t = 0; t < TILES; t++) {
        memcpy(m + 16 + 2 * t, &f->colsb[t], 2);
        m[48 + t] = f->rows[t];
    }
}

static int32_t product(uint8_t a, uint8_t b, int a_signed, int b_signed) {
    return (a_signed ? (int32_t)(int8_t)a : (int32_t)a) * (b_signed ? (int32_t)(int8_t)b : (int32_t)b);
}

/* dst[m][n] += sum over k, i of a[m][4k+i] * b[k][4n+i], in 32-bit wrap-around arithmetic. */
static void dot_product(struct tile_file *f, int dst, int a, int b, int a_signed, int b_signed) {
    for (int m = 0; m < f->rows[dst]; m++) {
        for (int n = 0; n < f->colsb[dst] / 4; n++) {
            uint32_t acc;
            memcpy(&acc, &f->data[dst][m][4 * n], 4);
            for (int k = 0; k < f->colsb[a] / 4; k++)
                for (int i = 0; i < 4; i++)
                    acc += (uint32_t)product(f->data[a][m][4 * k + i], f->data[b][k][4 * n + i], a_signed, b_signed);
            memcpy(&f->data[dst][m][4 * n], &acc, 4);
        }
    }
}

/* A BF16 value as F32, BF16 denormals read as zero (TDPBF16PS's DAZ). */
static float bf16_to_f32(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t bits = (uint32_t)((h & 0x7F80) ? h : h & 0x8000) << 16;
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

/* dst[m][n] += sum over k, i of a[m][2k+i] * b[k][2n+i], as a Sapphire Rapids-class Xeon's TDPBF16PS computes it
 * (compared on random tiles): the F32 accumulator and all 32 products summed exactly (here in double), then
 * rounded once to F32 (nearest even); BF16 denormals read as zero (DAZ), F32 denormal results written as zero
 * (FTZ). Bit for bit where the operands are of similar size (128,000 of 128,000 sums); where their exponents
 * spread over 2^-15..2^16 the hardware's sum is not exact and ~4% of results differ by an ulp or two. */
static void dot_product_bf16(struct tile_file *f, int dst, int a, int b) {
    for (int m = 0; m < f->rows[dst]; m++) {
        for (int n = 0; n < f->colsb[dst] / 4; n++) {
            float acc;
            memcpy(&acc, &f->data[dst][m][4 * n], 4);
            double sum = acc;
            for (int k = 0; k < f->colsb[a] / 4; k++)
                for (int i = 0; i < 2; i++)
                    sum += (double)bf16_to_f32(&f->data[a][m][4 * k + 2 * i]) * bf16_to_f32(&f->data[b][k][4 * n + 2 * i]);
            acc = (float)sum;
            uint32_t bits;
            memcpy(&bits, &acc, 4);
            if (!(bits & 0x7F800000)) acc = (bits & 0x80000000) ? -0.0f : 0.0f;
            memcpy(&f->data[dst][m][4 * n], &acc, 4);
        }
    }
}

/* Whether TDPB*D or TDPBF16PS may multiply these tiles: distinct, usable, and shapes that fit together (or the #UD
 * raised, naming the instruction). */
static int product_tiles_ok(struct tile_file *f, const char *instruction, int dst, int a, int b, uintptr_t rip) {
    for (int i = 0; i < 3; i++) {
        int t = i == 0 ? dst : i == 1 ? a : b;
        if (!tile_ok(f, t)) {
            unusable_tile(f, instruction, t, rip);
            return 0;
        }
    }
    if (dst == a || dst == b || a == b || f->colsb[a] % 4 || f->colsb[dst] % 4 || f->rows[dst] != f->rows[a] ||
        f->colsb[dst] != f->colsb[b] || f->colsb[a] / 4 != f->rows[b]) {
        char what[160];
        snprintf(what, sizeof what, "%s on tiles whose shapes do not fit together (#UD)", instruction);
        fault(SIGILL, what, rip);
        return 0;
    }
    return 1;
}

/* Carries out the AMX instruction at rip; returns its length, or 0 after arranging the fault it raises. */
static size_t emulate(ucontext_t *uc, const uint8_t *code) {
    uintptr_t rip = (uintptr_t)code;
    greg_t *regs = uc->uc_mcontext.gregs;
    if (code[0] != 0xC4 || (code[1] & 0x1F) != 2 || (code[2] & 0x84) != 0) return 0; /* not VEX.128.0F38.W0 */
    int rx = !(code[1] & 0x80), xx = !(code[1] & 0x40), bx = !(code[1] & 0x20);
    int vvvv = (~code[2] >> 3) & 0xF, pp = code[2] & 3;
    uint8_t opcode = code[3], modrm = code[4];
    int mod = modrm >> 6, reg = (modrm >> 3) & 7, rm = modrm & 7;
    size_t length = 5;
    uintptr_t address = 0;
    long stride = 0;
    if (mod != 3) {
        int32_t disp = 0;
        int has_base = 1, base = rm | bx << 3, rip_relative = 0;
        if (rm == 4) {
            uint8_t sib = code[length++];
            int index = ((sib >> 3) & 7) | xx << 3;
            base = (sib & 7) | bx << 3;
            if (index != 4) stride = (long)regs[gregs_of[index]] << (sib >> 6);
            if ((sib & 7) == 5 && mod == 0) has_base = 0;
        } else if (rm == 5 && mod == 0) {
            rip_relative = 1;
        }
        if (mod == 1) {
            disp = (int8_t)code[length++];
        } else if (mod == 2 || !has_base || rip_relative) {
            memcpy(&disp, code + length, 4);
            length += 4;
        }
        address = (uintptr_t)disp + (rip_relative ? rip + length : has_base ? (uintptr_t)regs[gregs_of[base]] : 0);
    } else if (rx || bx) {
        return 0;
    }
    if (!atomic_load(&permitted)) {
        fault(SIGILL, "tile instruction before arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) was granted", rip);
        return 0;
    }
    struct tile_file *f = this_thread();
    if (!f) {
        fault(SIGILL, "more threads than the emulator has tile files for", rip);
        return 0;
    }
    if (opcode == 0x49 && mod != 3 && pp == 0) { /* LDTILECFG m512 */
        if (!load_config(f, (const uint8_t *)address)) {
            fault(SIGSEGV, "LDTILECFG of a malformed tile configuration (#GP)", rip);
            return 0;
        }
        atomic_fetch_add(&n_ldtilecfg, 1);
    } else if (opcode == 0x49 && mod != 3 && pp == 1) { /* STTILECFG m512 */
        store_config(f, (uint8_t *)address);
    } else if (opcode == 0x49 && modrm == 0xC0 && pp == 0) { /* TILERELEASE */
        load_config(f, (const uint8_t[64]){0});
        atomic_fetch_add(&n_release, 1);
    } else if (opcode == 0x49 && mod == 3 && rm == 0 && pp == 3) { /* TILEZERO tmm */
        if (!tile_ok(f, reg)) {
            unusable_tile(f, "TILEZERO", reg, rip);
            return 0;
        }
        memset(f->data[reg], 0, sizeof f->data[reg]);
        atomic_fetch_add(&n_tilezero, 1);
    } else if (opcode == 0x4B && mod != 3 && rm == 4 && (pp == 3 || pp == 1)) { /* TILELOADD(T1) tmm, sibmem */
        if (!tile_ok(f, reg)) {
            unusable_tile(f, "TILELOADD", reg, rip);
            return 0;
        }
        memset(f->data[reg], 0, sizeof f->data[reg]);
        for (int r = 0; r < f->rows[reg]; r++)
            memcpy(f->data[reg][r], (const uint8_t *)(address + (uintptr_t)(r * stride)), f->colsb[reg]);
        atomic_fetch_add(&n_tileloadd, 1);
    } else if (opcode == 0x4B && mod != 3 && rm == 4 && pp == 2) { /* TILESTORED sibmem, tmm */
        if (!tile_ok(f, reg)) {
            unusable_tile(f, "TILESTORED", reg, rip);
            return 0;
        }
        for (int r = 0; r < f->rows[reg]; r++)
            memcpy((uint8_t *)(address + (uintptr_t)(r * stride)), f->data[reg][r], f->colsb[reg]);
        atomic_fetch_add(&n_tilestored, 1);
    } else if (opcode == 0x5E && mod == 3 && vvvv < TILES) { /* TDPB[SU][SU]D tmm1, tmm2, tmm3 */
        int dst = reg, a = rm, b = vvvv;
        if (!product_tiles_ok(f, "TDPB*D", dst, a, b, rip)) return 0;
        /* pp: F2 = TDPBSSD, F3 = TDPBSUD, 66 = TDPBUSD, none = TDPBUUD */
        dot_product(f, dst, a, b, pp == 3 || pp == 2, pp == 3 || pp == 1);
        atomic_fetch_add(&n_tdpb, 1);
    } else if (opcode == 0x5C && mod == 3 && vvvv < TILES && pp == 2) { /* TDPBF16PS tmm1, tmm2, tmm3 (F3) */
        int dst = reg, a = rm, b = vvvv;
        if (!product_tiles_ok(f, "TDPBF16PS", dst, a, b, rip)) return 0;
        dot_product_bf16(f, dst, a, b);
        atomic_fetch_add(&n_tdpbf16ps, 1);
    } else {
        return 0;
    }
    return length;
}

static void on_sigill(int sig, siginfo_t *info, void *context) {
    (void)sig;
    (void)info;
    ucontext_t *uc = context;
    const uint8_t *code = (const uint8_t *)uc->uc_mcontext.gregs[REG_RIP];
    size_t length = emulate(uc, code);
    if (length) {
        uc->uc_mcontext.gregs[REG_RIP] += (greg_t)length;
    } else if (signal(SIGILL, SIG_DFL) == SIG_ERR) {
        _exit(128 + SIGILL);
    }
}

long syscall(long number, ...) {
    static long (*libc_syscall)(long, ...);
    va_list ap;
    long a[6];
    va_start(ap, number);
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_arch_prctl && a[0] == ARCH_REQ_XCOMP_PERM && a[1] == XFEATURE_XTILEDATA) {
        atomic_store(&permitted, 1);
        atomic_fetch_add(&n_grants, 1);
        return 0;
    }
    if (!libc_syscall) libc_syscall = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return libc_syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

__attribute__((constructor)) static void install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigill;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGILL, &action, NULL);
    report_path = getenv("AMX_EMULATOR_REPORT");
}

__attribute__((destructor)) static void report(void) {
    if (!report_path || !(atomic_load(&n_grants) || atomic_load(&n_threads))) return;
    FILE *out = fopen(report_path, "a");
    if (!out) return;
    fprintf(out,
            "{\"pid\": %d, \"xtiledata_grants\": %ld, \"threads\": %ld, \"ldtilecfg\": %ld, \"tileloadd\": %ld, "
            "\"tilestored\": %ld, \"tilezero\": %ld, \"tdpb\": %ld, \"tdpbf16ps\": %ld, \"tilerelease\": %ld}\n",
            getpid(), atomic_load(&n_grants), atomic_load(&n_threads), atomic_load(&n_ldtilecfg), atomic_load(&n_tileloadd),
            atomic_load(&n_tilestored), atomic_load(&n_tilezero), atomic_load(&n_tdpb), atomic_load(&n_tdpbf16ps),
            atomic_load(&n_release));
    fclose(out);
}
