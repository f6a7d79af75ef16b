/* tests/capi.rs: the header's version against the library's, as a program
 * checks them. Prints "header MAJOR.MINOR.PATCH API library API STRING" and
 * exits 1 when the library's major differs from the header's. */
#include <stdio.h>
#include <string.h>

#include <wyvern.h>

#if !defined(WYVERN_API_VERSION) || !defined(WYVERN_VERSION_MAJOR) || \
    !defined(WYVERN_VERSION_MINOR) || !defined(WYVERN_VERSION_PATCH)
#error "wyvern.h defines no version"
#endif
/* Usable by the preprocessor, and one number of the three. */
#if WYVERN_API_VERSION != WYVERN_VERSION_MAJOR * 10000 + WYVERN_VERSION_MINOR * 100 + WYVERN_VERSION_PATCH
#error "WYVERN_API_VERSION is not MAJOR * 10000 + MINOR * 100 + PATCH"
#endif

int main(void) {
    int lib = wyvern_api_version();
    const char *s = wyvern_version_string();
    printf("header %d.%d.%d %d library %d %s\n", WYVERN_VERSION_MAJOR, WYVERN_VERSION_MINOR,
           WYVERN_VERSION_PATCH, WYVERN_API_VERSION, lib, s ? s : "(null)");
    if (lib / 10000 != WYVERN_VERSION_MAJOR ||
        (WYVERN_VERSION_MAJOR == 0 && lib / 100 != WYVERN_API_VERSION / 100)) {
        fprintf(stderr, "version_test: library %d does not match header %d\n", lib,
                WYVERN_API_VERSION);
        return 1;
    }
    return 0;
}
