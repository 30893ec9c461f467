/* MPI_IN_PLACE of the MPI library hemi is built against: a macro in mpi.h that the `mpi`
 * crate's bindings do not carry ((void *) 1 in Open MPI, (void *) -1 in MPICH). */
#include <mpi.h>

void *hemi_mpi_in_place(void) { return MPI_IN_PLACE; }
