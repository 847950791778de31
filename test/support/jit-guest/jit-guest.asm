; A test guest whose hot loop v86's JIT compiles (the counter guest idles in `hlt` and never
; gets hot). Pass k (k = 1, 2, ...) stores k into each of 4096 dwords at 4 MiB, then k at
; 5 MiB, then prints "." on COM1. So when it is stopped, the dword at 5 MiB is the last
; finished pass K, and the dwords at 4 MiB are K+1 up to some point, then K.
;
; Build: nasm -f bin jit-guest.asm -o jit-guest.bin (test/v86-shared-memory.test.ts checks
; that the committed image is what nasm makes of this file, where nasm is installed).

bits 32
org 0x100000

MB_MAGIC equ 0x1BADB002
MB_FLAGS equ 0x00010000         ; the address fields below are valid: v86 loads a flat binary
AREA     equ 0x400000
DONE     equ 0x500000
COM1     equ 0x3F8

mb_header:
    dd MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
    dd mb_header, mb_header, image_end, image_end, start

start:
    mov esp, 0x200000
    xor eax, eax
pass:
    inc eax
    mov edi, AREA
    mov ecx, 4096
fill:
    mov [edi], eax
    add edi, 4
    dec ecx
    jnz fill
    mov [DONE], eax
    mov ebx, eax
    mov dx, COM1
    mov al, '.'
    out dx, al
    mov eax, ebx
    jmp pass
image_end:
