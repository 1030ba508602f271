#include "ckptledger/runner.h"

namespace ckptledger {

// Out of line: the vtable and type info of Runner live in this one object file.
Runner::~Runner() = default;

Dict Runner::meta_extra() const { return make_dict(); }

const JobGroup* Runner::job() const { return nullptr; }

}  // namespace ckptledger
