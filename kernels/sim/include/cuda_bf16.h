// Emulator stand-in: the bf16 type comes from simt.h.
#pragma once
