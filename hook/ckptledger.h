// The one header a training loop includes (installed as <ckptledger/ckptledger.h>).
#pragma once

#include "hook/checkpoint_hook.h"
#include "hook/hook_config.h"
#include "hook/loops.h"
#include "hook/runner.h"
#include "ledger/ledger.h"
