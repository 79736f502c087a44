/* realtime._sendeach: the fan-out's member loop in C (realtime/_fanout.py says why).
 *
 * send_each(table, slots, frame) writes `frame` to the socket of every slot in `slots`
 * whose entry in `table` (an array('i') of file descriptors, by slot; -1: not clean) is
 * a descriptor, with one non-blocking send() each. It returns None when every slot took
 * the whole frame; otherwise a list of (slot, sent) for the others, where `sent` is None
 * for a slot that was not clean (the caller takes its slow path), or the bytes the kernel
 * took (0: it would block; -1: an error), after which that slot's entry is set to -1 (the
 * caller buffers the rest, and the socket is not clean any more). Out of memory while
 * that list is built (MemoryError), the sockets left in mid-frame are shut down
 * (``cut_partial``).
 *
 * Python's own socket.send() per member costs more than the kernel's send here: a method
 * call, argument parsing, a GIL release per call, and the member objects read to find it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

/* Room for the slots that need Python, gathered with the GIL released. */
typedef struct {
    int slot;
    int fd;
    Py_ssize_t sent; /* PY_SSIZE_T_MIN: not clean */
} miss_t;

/* The answer could not be built (out of memory) after the sends: the caller never learns
 * which sockets took part of the frame, and its rest would never follow them (the next
 * frame written after half of this one, a stream the client misreads). Those are shut
 * down instead: the client sees the end of the connection, and the server's reactor
 * meets it on its next read and cleans up as after any lost connection. */
static void
cut_partial(const miss_t *misses, Py_ssize_t count)
{
    Py_ssize_t i;
    for (i = 0; i < count; i++) {
        if (misses[i].sent > 0) {
            shutdown(misses[i].fd, SHUT_RDWR);
        }
    }
}

static int
grow(miss_t **misses, Py_ssize_t *room)
{
    Py_ssize_t grown = *room ? *room * 2 : 16;
    miss_t *more = PyMem_RawRealloc(*misses, (size_t)grown * sizeof(miss_t));
    if (more == NULL) {
        return -1;
    }
    *misses = more;
    *room = grown;
    return 0;
}

static PyObject *
send_each(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer table, slots, frame;
    PyObject *result = NULL;
    miss_t *misses = NULL;
    Py_ssize_t count = 0, room = 0, i, n = 0, stop = -1;
    const int *want = NULL;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_each(table, slots, frame)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &table, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &slots, PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&table);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &frame, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&slots);
        PyBuffer_Release(&table);
        return NULL;
    }
    want = (const int *)slots.buf;
    n = slots.len / (Py_ssize_t)sizeof(int);
    if (table.itemsize != sizeof(int) || slots.itemsize != sizeof(int)
        || table.format == NULL || slots.format == NULL
        || strcmp(table.format, "i") != 0 || strcmp(slots.format, "i") != 0) {
        PyErr_SetString(PyExc_TypeError, "table and slots must be array('i')");
        goto done;
    }
    {
        int *fds = (int *)table.buf;
        Py_ssize_t size = table.len / (Py_ssize_t)sizeof(int);
        const char *data = (const char *)frame.buf;
        Py_ssize_t length = frame.len;

        Py_BEGIN_ALLOW_THREADS
        for (i = 0; i < n; i++) {
            int slot = want[i];
            int fd;
            ssize_t sent;
            /* Room for this slot's miss before anything is sent to it: out of memory,
             * the loop stops with nothing half done, and the rest go to Python. */
            if (count == room && grow(&misses, &room) < 0) {
                stop = i;
                break;
            }
            if (slot < 0 || slot >= size || (fd = fds[slot]) < 0) {
                misses[count].slot = slot;
                misses[count].fd = -1;
                misses[count].sent = PY_SSIZE_T_MIN;
                count++;
                continue;
            }
            do {
                sent = send(fd, data, (size_t)length, MSG_DONTWAIT | MSG_NOSIGNAL);
            } while (sent < 0 && errno == EINTR);
            if (sent == length) {
                continue;
            }
            if (sent < 0) {
                sent = (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
            }
            fds[slot] = -1;
            misses[count].slot = slot;
            misses[count].fd = fd;
            misses[count].sent = (Py_ssize_t)sent;
            count++;
        }
        Py_END_ALLOW_THREADS
    }
    if (stop < 0 && count == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = PyList_New(count + (stop < 0 ? 0 : n - stop));
    if (result == NULL) {
        cut_partial(misses, count);
        goto done;
    }
    for (i = 0; i < count; i++) {
        PyObject *pair = misses[i].sent == PY_SSIZE_T_MIN
            ? Py_BuildValue("(iO)", misses[i].slot, Py_None)
            : Py_BuildValue("(in)", misses[i].slot, misses[i].sent);
        if (pair == NULL) {
            Py_CLEAR(result);
            cut_partial(misses, count);
            goto done;
        }
        PyList_SET_ITEM(result, i, pair);
    }
    for (i = stop < 0 ? n : stop; i < n; i++) {
        PyObject *pair = Py_BuildValue("(iO)", want[i], Py_None);
        if (pair == NULL) {
            Py_CLEAR(result);
            cut_partial(misses, count);
            goto done;
        }
        PyList_SET_ITEM(result, count + i - stop, pair);
    }
done:
    PyMem_RawFree(misses);
    PyBuffer_Release(&frame);
    PyBuffer_Release(&slots);
    PyBuffer_Release(&table);
    return result;
}

static PyMethodDef methods[] = {
    {"send_each", (PyCFunction)(void (*)(void))send_each, METH_FASTCALL,
     "send_each(table, slots, frame): one frame to the clean sockets of many slots; "
     "None, or [(slot, sent or None), ...] for those that need Python."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "realtime._sendeach",
    "The fan-out's member loop in C (see realtime/_fanout.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__sendeach(void)
{
    return PyModule_Create(&module);
}
