// The one header a training loop includes (installed as <ckptledger/ckptledger.h>).
#pragma once

#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/hook_config.h"
#include "ckptledger/ledger.h"
#include "ckptledger/loops.h"
#include "ckptledger/runner.h"
#include "ckptledger/stateful.h"
#include "ckptledger/torch_runner.h"
#include "ckptledger/torch_state.h"
