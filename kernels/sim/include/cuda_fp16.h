// Emulator stand-in: the f16 type comes from simt.h.
#pragma once
