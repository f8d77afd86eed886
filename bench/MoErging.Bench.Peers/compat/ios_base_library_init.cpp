// std::ios_base_library_init() for libstdc++ older than GCC 13 (see LibstdcxxCompat.cs). GCC 13's headers make
// every translation unit that includes <iostream> reference this function (a no-op in GCC 13's library, which
// owns the one static ios_base::Init); GCC 12's headers put a static ios_base::Init in each such unit instead,
// so this shim keeps one to initialise the standard streams for code compiled against the newer headers.
#include <ios>

namespace std
{
void ios_base_library_init() {}
}

static std::ios_base::Init streams;
