#ifndef LORA_TOOL_SHA256_H
#define LORA_TOOL_SHA256_H
#include <stddef.h>
#include <stdint.h>

/* SHA-256 (FIPS 180-4), streaming: init, any number of updates, final. Portable C, and the x86 SHA
 * extensions (SHA-NI) when the CPU has them and `accelerated` is nonzero: the same digest. */
struct lora_sha256 {
    uint32_t state[8];
    uint64_t length;          /* bytes hashed so far */
    unsigned char block[64];  /* a partial block */
    size_t used;              /* bytes of it in use */
    int accelerated;
};

void lora_sha256_init(struct lora_sha256 *h, int accelerated);
void lora_sha256_update(struct lora_sha256 *h, const void *data, size_t count);
void lora_sha256_final(struct lora_sha256 *h, unsigned char digest[32]);
/* 1 when this CPU runs the SHA-NI path. */
int lora_sha256_hardware(void);
#endif
