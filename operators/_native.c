/* Native kernels of the token-shard loader (pipelines/train_data.py), built by `pip install` when a C compiler is
 * there; without them the loader uses numpy and gives the same answers, slower.
 *
 *   nonfinite(buffer, itemsize) -> bool
 *       True when any float16 (itemsize 2) or float32 (itemsize 4) element of a C-contiguous buffer is NaN or
 *       +-inf: its exponent bits are all ones. One pass over memory (numpy needs two reductions for the same
 *       answer), in blocks with an early exit, without the GIL. The buffer is first touched once every 64 KiB: a
 *       memory-mapped shard's page-cache pages are then mapped by the kernel's fault-around, 64 KiB per fault,
 *       instead of stopping the scan at a fault every 64 KiB.
 *       None when the buffer's address or length is not a multiple of itemsize (the caller scans it another way);
 *       ValueError for another itemsize, or for a buffer that cannot be exported C-contiguous.
 *
 *   tar_checksum(header) -> int
 *       The ustar checksum of a 512-byte header: the byte sum with the checksum field (bytes 148-155) taken as
 *       spaces.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* the same loop compiled for AVX2 and for baseline x86-64; the loader picks one when the module loads */
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define BLOCK 4096 /* elements per early-exit check */

static void touch(const unsigned char *p, size_t n) {
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < n; i += 65536) sink ^= p[i];
    (void)sink;
}

CLONES static int bad16(const uint16_t *p, size_t n) {
    for (size_t i = 0; i < n; i += BLOCK) {
        size_t end = n - i < BLOCK ? n : i + BLOCK;
        uint16_t hit = 0;
        for (size_t j = i; j < end; j++) hit |= (uint16_t)((p[j] & 0x7C00u) == 0x7C00u);
        if (hit) return 1;
    }
    return 0;
}

CLONES static int bad32(const uint32_t *p, size_t n) {
    for (size_t i = 0; i < n; i += BLOCK) {
        size_t end = n - i < BLOCK ? n : i + BLOCK;
        uint32_t hit = 0;
        for (size_t j = i; j < end; j++) hit |= (uint32_t)((p[j] & 0x7F800000u) == 0x7F800000u);
        if (hit) return 1;
    }
    return 0;
}

static PyObject *nonfinite(PyObject *self, PyObject *args) {
    PyObject *obj;
    int itemsize;
    if (!PyArg_ParseTuple(args, "Oi:nonfinite", &obj, &itemsize)) return NULL;
    if (itemsize != 2 && itemsize != 4) {
        PyErr_Format(PyExc_ValueError, "nonfinite: itemsize must be 2 (float16) or 4 (float32), got %d", itemsize);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if ((uintptr_t)view.buf % (uintptr_t)itemsize || view.len % itemsize) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    int bad;
    Py_BEGIN_ALLOW_THREADS
    touch((const unsigned char *)view.buf, (size_t)view.len);
    if (itemsize == 2)
        bad = bad16((const uint16_t *)view.buf, (size_t)view.len / 2);
    else
        bad = bad32((const uint32_t *)view.buf, (size_t)view.len / 4);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyBool_FromLong(bad);
}

static PyObject *tar_checksum(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (view.len != 512) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "tar_checksum: a header is 512 bytes, got %zd", view.len);
        return NULL;
    }
    const unsigned char *h = (const unsigned char *)view.buf;
    long sum = 8 * ' ';
    for (int i = 0; i < 512; i++)
        if (i < 148 || i >= 156) sum += h[i];
    PyBuffer_Release(&view);
    return PyLong_FromLong(sum);
}

static PyMethodDef methods[] = {
    {"nonfinite", nonfinite, METH_VARARGS, "nonfinite(buffer, itemsize) -> True when a float16/32 is NaN or inf"},
    {"tar_checksum", tar_checksum, METH_O, "tar_checksum(header) -> the ustar checksum of a 512-byte header"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "Native kernels of the token-shard loader.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
