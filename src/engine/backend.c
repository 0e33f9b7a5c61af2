/* backend.c: the device backends' tables (backend.h). The CUDA backend is linked in when the
 * build has it (TL_HAVE_CUDA). */
#include "backend.h"
#include "../cuda/cuda.h"

#include <string.h>

const tl_backend_ops *tl_backend_load(const char *device, tl_error *err) {
    if (strcmp(device, "cuda")) {
        tl_fail(err, "no backend named '%s' (cuda)", device);
        return NULL;
    }
#ifdef TL_HAVE_CUDA
    return tl_cuda_backend();
#else
    tl_fail(err, "this build of tailor has no CUDA support (configure with -DTL_CUDA=ON where nvcc is installed)");
    return NULL;
#endif
}
