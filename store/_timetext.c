/*
 * store._timetext: epoch seconds as SQLite's stored text, at C speed.
 *
 * A scan binds two timestamps per aggregated observation (first and last seen), tens of
 * thousands per window, as the text SQLAlchemy's DateTime stores on SQLite
 * ("YYYY-MM-DD HH:MM:SS.ffffff"). store/_models.py does it in Python (_epoch_text); this module
 * does the same computation in C for floats and hands everything else (None aside) to the
 * Python function it was given, so the stored text is the same either way (the tests compare
 * both on random and edge instants). Nothing here reads outside its arguments.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>

/* From this on (and before 1970), Python decides: four-digit years only here. */
#define SAFE_SECONDS 253402300799.0 /* 9999-12-31 23:59:59 */

typedef struct {
    PyObject_HEAD
    PyObject *other; /* called for anything but a float or None */
    vectorcallfunc vectorcall;
} Processor;

/* ``width`` decimal digits of ``value`` (0 <= value < 10 ** width), zero-padded. */
static void put_digits(char *out, long long value, int width) {
    for (int i = width - 1; i >= 0; i--) {
        out[i] = (char)('0' + value % 10);
        value /= 10;
    }
}

static PyObject *format_or_fallback(Processor *self, PyObject *value) {
    if (value == Py_None) {
        Py_RETURN_NONE;
    }
    if (!PyFloat_CheckExact(value)) {
        return PyObject_CallOneArg(self->other, value);
    }
    double ts = PyFloat_AS_DOUBLE(value);
    if (!(ts >= 0.0 && ts < SAFE_SECONDS)) { /* NaN, infinities, before 1970, near 10000 */
        return PyObject_CallOneArg(self->other, value);
    }
    /* As store._models._epoch_text: second = floor(ts); micro = round((ts - second) * 1e6),
     * half to even (nearbyint in the default rounding mode, as Python's round()). */
    double second = floor(ts);
    double micro = nearbyint((ts - second) * 1e6);
    long long whole = (long long)second;
    long long micros = (long long)micro;
    if (micros >= 1000000) {
        whole += 1;
        micros -= 1000000;
    }
    /* The civil date of the day (days_from_civil's inverse, proleptic Gregorian: what gmtime
     * gives from 1970 to 9999, H. Hinnant's algorithm), then the digits by hand. */
    long long days = whole / 86400;
    long long rest = whole % 86400;
    long long z = days + 719468;
    long long era = z / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    long long day = doy - (153 * mp + 2) / 5 + 1;
    long long month = mp < 10 ? mp + 3 : mp - 9;
    long long year = yoe + era * 400 + (month <= 2);
    long long hour = rest / 3600, minute = rest / 60 % 60, sec = rest % 60;
    PyObject *result = PyUnicode_New(26, 127);
    if (result == NULL) {
        return NULL;
    }
    char *text = (char *)PyUnicode_1BYTE_DATA(result);
    put_digits(text, year, 4);
    text[4] = '-';
    put_digits(text + 5, month, 2);
    text[7] = '-';
    put_digits(text + 8, day, 2);
    text[10] = ' ';
    put_digits(text + 11, hour, 2);
    text[13] = ':';
    put_digits(text + 14, minute, 2);
    text[16] = ':';
    put_digits(text + 17, sec, 2);
    text[19] = '.';
    put_digits(text + 20, micros, 6);
    return result;
}

static PyObject *processor_call(PyObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *value;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "a time processor takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "processor", 1, 1, &value)) {
        return NULL;
    }
    return format_or_fallback((Processor *)self, value);
}

static PyObject *processor_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t count = PyVectorcall_NARGS(nargsf);
    if (count != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a time processor takes exactly one argument");
        return NULL;
    }
    return format_or_fallback((Processor *)self, args[0]);
}

static PyObject *processor_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *other;
    if (!PyArg_ParseTuple(args, "O:processor", &other)) {
        return NULL;
    }
    if (!PyCallable_Check(other)) {
        PyErr_SetString(PyExc_TypeError, "the fallback must be callable");
        return NULL;
    }
    Processor *self = (Processor *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(other);
    self->other = other;
    self->vectorcall = processor_vectorcall;
    return (PyObject *)self;
}

static int processor_traverse(PyObject *self, visitproc visit, void *arg) {
    Py_VISIT(((Processor *)self)->other);
    return 0;
}

static int processor_clear(PyObject *self) {
    Py_CLEAR(((Processor *)self)->other);
    return 0;
}

static void processor_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    processor_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject ProcessorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "store._timetext.Processor",
    .tp_doc = "Processor(other): epoch seconds (float) -> SQLite's stored text; None -> None; "
              "anything else -> other(value).",
    .tp_basicsize = sizeof(Processor),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Processor, vectorcall),
    .tp_new = processor_new,
    .tp_call = processor_call,
    .tp_traverse = processor_traverse,
    .tp_clear = processor_clear,
    .tp_dealloc = processor_dealloc,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "store._timetext", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__timetext(void) {
    if (PyType_Ready(&ProcessorType) < 0) {
        return NULL;
    }
    PyObject *created = PyModule_Create(&module);
    if (created == NULL) {
        return NULL;
    }
    Py_INCREF(&ProcessorType);
    if (PyModule_AddObject(created, "Processor", (PyObject *)&ProcessorType) < 0) {
        Py_DECREF(&ProcessorType);
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
