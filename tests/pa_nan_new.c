/* operator new[](size_t): zero-size arrays come back filled with 0xff, so a read past them is a NaN float. */
#include <stdlib.h>
#include <string.h>
void *_Znam(size_t n) {
    void *p = malloc(n ? n : 16);
    if (!p) abort();
    if (n == 0) memset(p, 0xff, 16);
    return p;
}
