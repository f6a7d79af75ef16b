"""The cffi (ABI mode) binding of libwyvern.so and how the library is found.

Nothing is compiled: ``cffi.FFI().dlopen()`` loads the shared library that
``cargo build`` / ``scripts/install.sh`` already produce, and the declarations
below mirror ``include/wyvern.h`` (``python/tests/test_api.py`` checks the
constants against the header).
"""

import ctypes.util
import os
import shutil
import subprocess

import cffi

CDEF = """
typedef struct wyvern_client wyvern_client;
typedef struct wyvern_endpoint wyvern_endpoint;
typedef struct wyvern_msg wyvern_msg;
typedef struct wyvern_buf wyvern_buf;
typedef struct wyvern_async_error {
  uint64_t cookie;
  int status;
  uint32_t node;
} wyvern_async_error;

int wyvern_attach(const char *socket_path, const char *name, wyvern_client **out_client);
int wyvern_detach(wyvern_client *client);
int wyvern_node_id(wyvern_client *client, uint32_t *out_node);
int wyvern_node_count(wyvern_client *client, uint32_t *out_count);
int wyvern_eager_max(wyvern_client *client, size_t *out_bytes);
int wyvern_take_error(wyvern_client *client, wyvern_async_error *out);
int wyvern_endpoint_open(wyvern_client *client, uint32_t id_or_any, wyvern_endpoint **out_ep);
int wyvern_endpoint_close(wyvern_endpoint *ep);
int wyvern_endpoint_id(wyvern_endpoint *ep, uint32_t *out_id);
int wyvern_send_ex(wyvern_endpoint *ep, uint32_t dst_node, uint32_t dst_ep,
                   const void *buf, size_t len, uint32_t flags, int64_t timeout_us,
                   uint64_t *out_cookie);
int wyvern_recv_from(wyvern_endpoint *ep, void *buf, size_t cap, size_t *out_len,
                     uint32_t *out_src_node, uint32_t *out_src_ep, int64_t timeout_us);
int wyvern_recv_zc(wyvern_endpoint *ep, wyvern_msg **out_msg, int64_t timeout_us);
typedef struct wyvern_out {
  uint32_t dst_node;
  uint32_t dst_ep;
  const void *data;
  size_t len;
} wyvern_out;
typedef void (*wyvern_recv_fn)(void *ctx, uint32_t src_node, uint32_t src_ep,
                               const void *data, size_t len);
int wyvern_send_many(wyvern_endpoint *ep, const wyvern_out *msgs, size_t n, size_t *out_sent,
                     int64_t timeout_us);
int wyvern_recv_many(wyvern_endpoint *ep, size_t max, wyvern_recv_fn f, void *ctx,
                     size_t *out_n, int64_t timeout_us);
int wyvern_poll(wyvern_endpoint *ep);
int wyvern_wait_fd(wyvern_endpoint *ep, int *out_fd);
int wyvern_arm(wyvern_endpoint *ep);
int wyvern_disarm(wyvern_endpoint *ep);
const void *wyvern_msg_data(wyvern_msg *msg);
int64_t wyvern_msg_len(wyvern_msg *msg);
int wyvern_msg_src(wyvern_msg *msg, uint32_t *out_node, uint32_t *out_ep);
int wyvern_msg_zero_copy(wyvern_msg *msg);
int wyvern_msg_release(wyvern_msg *msg);
int wyvern_alloc(wyvern_client *client, size_t len, int64_t timeout_us, wyvern_buf **out_buf);
void *wyvern_buf_data(wyvern_buf *buf);
int64_t wyvern_buf_len(wyvern_buf *buf);
int wyvern_buf_free(wyvern_buf *buf);
int wyvern_send_buf(wyvern_endpoint *ep, uint32_t dst_node, uint32_t dst_ep, wyvern_buf *buf,
                    uint32_t flags, int64_t timeout_us, uint64_t *out_cookie);
const char *wyvern_strerror(int code);
const char *wyvern_last_error(void);
int wyvern_api_version(void);
const char *wyvern_version_string(void);
"""

# Constants of include/wyvern.h (cffi's ABI mode cannot read #defines of
# negative values, so they live here; a test compares them with the header).
WYVERN_ANY = 0xFFFFFFFF
WYVERN_FOREVER = -1
WYVERN_BUFFERED = 0
WYVERN_DELIVERED = 1
WYVERN_NO_NODE = 0xFFFFFFFF

ffi = cffi.FFI()
ffi.cdef(CDEF)

LIBNAME = "libwyvern.so"


def _candidates():
    """Where the library is looked for, in order: (description, path or None)."""
    env = os.environ.get("WYVERN_LIB")
    if env:
        # WYVERN_LIB names the file or the directory holding it.
        p = os.path.join(env, LIBNAME) if os.path.isdir(env) else env
        yield "WYVERN_LIB=%s" % env, p
        return  # an explicit choice: never fall back to another copy
    here = os.path.dirname(os.path.abspath(__file__))
    yield "next to the package", os.path.join(here, LIBNAME)
    found = ctypes.util.find_library("wyvern")
    yield "ctypes.util.find_library('wyvern')", found
    if shutil.which("pkg-config"):
        try:
            libdir = subprocess.run(
                ["pkg-config", "--variable=libdir", "wyvern"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            libdir = ""
        yield "pkg-config --variable=libdir wyvern", (
            os.path.join(libdir, LIBNAME) if libdir else None
        )
    else:
        yield "pkg-config (not installed)", None


def load():
    """dlopen libwyvern.so; raise ImportError naming every place tried."""
    tried = []
    for how, path in _candidates():
        if not path:
            tried.append("%s: nothing found" % how)
            continue
        # find_library returns a bare soname the loader resolves itself.
        if os.sep in path and not os.path.exists(path):
            tried.append("%s: %s does not exist" % (how, path))
            continue
        try:
            return ffi.dlopen(path), path
        except OSError as e:
            tried.append("%s: %s: %s" % (how, path, e))
    raise ImportError(
        "wyvern: cannot load %s; tried:\n  %s\n"
        "Set WYVERN_LIB to the library (e.g. target/debug/libwyvern.so after "
        "`cargo build`, or PREFIX/lib/libwyvern.so after scripts/install.sh)."
        % (LIBNAME, "\n  ".join(tried))
    )


lib, path = load()
