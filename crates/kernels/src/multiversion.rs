//! Run-time multiversioning of portable loops.
//!
//! A loop written once in plain Rust (an `#[inline(always)]` body whose
//! accumulators have a fixed number of lanes) is compiled again inside
//! `target_feature` wrappers, so LLVM vectorises it for AVX-512 or AVX2
//! where [`Isa::best`](crate::Isa::best) finds them. The lanes fix the order
//! of every f32 operation, so each version gives the same bits.
#![allow(unsafe_code)]

/// Defines `fn $name(args) -> ret` that runs `$body(args)` compiled for the
/// best instruction set this CPU has.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty => $body:path) => {
        $(#[$meta])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,f16c")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                match $crate::Isa::best() {
                    // SAFETY: `best` only names paths whose features this
                    // CPU reports (AVX-512 VNNI implies F, VL and BW here).
                    $crate::Isa::Avx512Vnni => return unsafe { wide($($arg),*) },
                    // SAFETY: as above.
                    $crate::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use multiversion;
