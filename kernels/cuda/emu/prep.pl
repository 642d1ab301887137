#!/usr/bin/perl
# Rewrites a kernels/cuda/*.cu file for the CPU SIMT emulator (kernels/cuda/emu/run.sh): includes emu.h, turns
# `extern __shared__ float sm[];` into the emulator's block buffer and `k<<<g, b, smem, s>>>(args);` into
# `emu_launch(g, b, smem, [&]() { k(args); });`. Usage: prep.pl in.cu out.cpp
use strict;
use warnings;
my ($in, $out) = @ARGV;
open(my $f, '<', $in) or die "$in: $!";
local $/;
my $s = <$f>;
close $f;
$s =~ s{#include "kernels/cuda/cuda_common.cuh"}{#include "emu.h"\n#include "kernels/cuda/cuda_common.cuh"};
$s =~ s{extern __shared__ float sm\[\];}{float *sm = emu_dyn_smem;}g;
$s =~ s{([A-Za-z_][A-Za-z_0-9]*(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);}{
    my ($name, $cfg, $args) = ($1, $2, $3);
    my @p = map { s/^\s+|\s+$//gr } split /,(?![^()]*\))/, $cfg;
    my $sm = @p > 2 ? $p[2] : '0';
    "emu_launch(dim3($p[0]), dim3($p[1]), $sm, [&]() { $name($args); });"
}gse;
open(my $o, '>', $out) or die "$out: $!";
print $o $s;
close $o;
