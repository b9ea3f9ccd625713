/*
 * send.c - the per-record send as one CPython call (module engine._send).
 *
 * Everything about the ring lives in ring.c, compiled into engine._native by
 * cffi. A cffi call, though, releases and retakes the GIL and converts each
 * argument: on the reference machine that costs more than the append itself,
 * and Producer.send made three such calls per record (partitioner, clock,
 * append). This module is only a shim: one METH_FASTCALL function that takes
 * the Python arguments as they are and calls engine_ring_send through a
 * pointer that engine._native hands over once (init). It keeps the GIL: the
 * append never waits (engine_ring_send answers FULL instead, and the caller
 * waits through cffi, GIL released).
 *
 *   init(send_address: int, future_type: type) -> None
 *   send(route_address: int, topic: str, key: bytes | None, value: bytes | None,
 *        partition: int | None)
 *       -> future_type((topic, partition, offset, timestamp_ms))   on success
 *       -> int: minus a ring code                                  on failure
 *       -> None: key or value is not bytes / None, or partition not an int in
 *          range of int32 (use the general path)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "ring.h"

typedef int64_t (*send_fn)(engine_route_t *, int32_t, const char *, int32_t, const char *,
                           int32_t);

static send_fn ring_send = NULL;
static PyTypeObject *future_type = NULL;

static PyObject *shim_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyType_Check(args[1]) ||
        !PyType_IsSubtype((PyTypeObject *)args[1], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "init(send_address, future_type): a tuple subtype");
        return NULL;
    }
    void *address = PyLong_AsVoidPtr(args[0]);
    if (!address) return NULL;
    ring_send = (send_fn)address;
    Py_XDECREF(future_type);
    Py_INCREF(args[1]);
    future_type = (PyTypeObject *)args[1];
    Py_RETURN_NONE;
}

static int bytes_or_none(PyObject *o, const char **data, int32_t *length) {
    if (o == Py_None) {
        *data = NULL;
        *length = -1;
        return 1;
    }
    if (!PyBytes_CheckExact(o) || PyBytes_GET_SIZE(o) > INT32_MAX) return 0;
    *data = PyBytes_AS_STRING(o);
    *length = (int32_t)PyBytes_GET_SIZE(o);
    return 1;
}

static PyObject *shim_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !ring_send) {
        PyErr_SetString(PyExc_TypeError,
                        "send(route_address, topic, key, value, partition) after init()");
        return NULL;
    }
    engine_route_t *route = PyLong_AsVoidPtr(args[0]);
    if (!route) return NULL;
    const char *key, *value;
    int32_t key_length, value_length;
    if (!bytes_or_none(args[2], &key, &key_length) ||
        !bytes_or_none(args[3], &value, &value_length))
        Py_RETURN_NONE;
    int32_t partition = -1;
    if (args[4] != Py_None) {
        if (!PyLong_CheckExact(args[4])) Py_RETURN_NONE;
        long p = PyLong_AsLong(args[4]);
        if (p < 0 || p > INT32_MAX) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        partition = (int32_t)p;
    }
    int64_t offset = ring_send(route, partition, key, key_length, value, value_length);
    if (offset < 0) return PyLong_FromLongLong(offset);
    PyObject *part = PyLong_FromLong(route->last_partition);
    PyObject *off = PyLong_FromLongLong(offset);
    PyObject *ts = PyLong_FromLongLong(route->last_timestamp_ms);
    PyObject *future = future_type->tp_alloc(future_type, 4);
    if (!part || !off || !ts || !future) {
        Py_XDECREF(part);
        Py_XDECREF(off);
        Py_XDECREF(ts);
        Py_XDECREF(future);
        return NULL;
    }
    Py_INCREF(args[1]);
    PyTuple_SET_ITEM(future, 0, args[1]);
    PyTuple_SET_ITEM(future, 1, part);
    PyTuple_SET_ITEM(future, 2, off);
    PyTuple_SET_ITEM(future, 3, ts);
    return future;
}

static PyMethodDef methods[] = {
    {"init", (PyCFunction)(void (*)(void))shim_init, METH_FASTCALL, "init(send_address, future_type)"},
    {"send", (PyCFunction)(void (*)(void))shim_send, METH_FASTCALL,
     "send(route_address, topic, key, value, partition)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "engine._send", NULL, -1, methods};

PyMODINIT_FUNC PyInit__send(void) { return PyModule_Create(&module); }
