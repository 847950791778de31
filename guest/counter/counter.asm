; tandem's built-in guest: a multiboot kernel that counts, dirties RAM and
; writes the disk at a steady tick rate, and says so on COM1. It exists so that
; replication, failover and the COW disk can be checked against a guest whose
; every output line is predictable: `counter N` must go up by exactly one.
;
; Build: node guest/counter/build.mjs   (nasm -f bin; see README.md)
; Configure: the multiboot command line (v86's `cmdline` option), e.g.
;   hz=20 dirty=16 disk=1
;
; Rules the code keeps:
; - Deterministic from machine state alone: the only input from the host is
;   the timer interrupt. No RTC, no PIT counter reads, no TSC. A checkpoint
;   restored elsewhere therefore continues exactly.
; - Idle in `hlt`, so v86 sleeps (setTimeout) between ticks instead of spinning.
; - Every device wait is a bounded poll: a missing or broken device costs a
;   message or an error count, never a hang.
; - Nothing below 1 MiB is written, and RAM dirtying never touches the kernel.

bits 32
org 0x100000

; ---- multiboot v1 header ---------------------------------------------------
; Flag bit 1 asks for memory information (v86 answers with a memory map, see
; mem_top below); bit 16 says the address fields are valid, which is what
; lets v86 load a flat binary (it does not parse anything but ELF otherwise).
MB_MAGIC    equ 0x1BADB002
MB_FLAGS    equ 0x00010002
MB_BOOTED   equ 0x2BADB002      ; what the loader leaves in EAX

mb_header:
    dd MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
    dd mb_header                ; header_addr
    dd mb_header                ; load_addr: the file is loaded from its first byte
    dd image_end                ; load_end_addr
    dd bss_end                  ; bss_end_addr
    dd start                    ; entry_addr

; ---- constants --------------------------------------------------------------
COM1        equ 0x3F8
ATA         equ 0x1F0           ; primary channel command block
ATA_CTL     equ 0x3F6           ; primary channel control / alt status
ST_ERR      equ 0x01
ST_DRQ      equ 0x08
ST_DF       equ 0x20
ST_BSY      equ 0x80
POLLS       equ 0x1000000       ; bound on every disk poll: a second or more in
                                ; v86, so a host disk that answers asynchronously
                                ; (between v86 time slices) is never timed out
PIT_HZ      equ 1193182
RING        equ 256             ; sectors 0..255 hold the stamps
PAGE        equ 4096

; multiboot info offsets
MBI_FLAGS   equ 0
MBI_UPPER   equ 8
MBI_CMDLINE equ 16
MBI_MMLEN   equ 44
MBI_MMADDR  equ 48

; ---- entry ------------------------------------------------------------------
start:
    cli
    cld
    mov esi, eax                ; keep magic and info pointer out of the way
    mov ebp, ebx                ; of rep stosd
    ; The loader left no GDT we may rely on: interrupts reload CS on iret.
    lgdt [gdt_ptr]
    jmp 0x08:.flat
.flat:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    ; Fresh RAM is zero, but a reboot (v86 restart) reuses it: clear .bss.
    mov edi, bss_start
    mov ecx, (bss_end - bss_start) / 4
    xor eax, eax
    rep stosd
    mov esp, stack_top

    ; Defaults, then the command line may override them.
    mov dword [hz], 20
    mov dword [dirty], 16
    mov dword [use_disk], 1
    xor eax, eax                ; info flags: none unless a multiboot loader
    cmp esi, MB_BOOTED
    jne .no_info
    mov eax, [ebp + MBI_FLAGS]
.no_info:
    mov [mbi_flags], eax
    mov [mbi], ebp

    call serial_init
    call parse_cmdline
    call find_mem_top
    call clamp_settings

    mov esi, s_banner_hz
    call puts
    mov eax, [hz]
    call put_dec
    mov esi, s_banner_dirty
    call puts
    mov eax, [dirty]
    call put_dec
    mov esi, s_banner_disk
    call puts
    mov eax, [use_disk]
    call put_dec
    mov al, 10
    call putc

    cmp dword [use_disk], 0
    je .disk_done
    call ata_detect
    jnc .disk_done
    mov dword [use_disk], 0
    mov esi, s_no_disk
    call puts
.disk_done:

    call idt_init
    call pic_init
    call pit_init
    sti

; ---- idle loop ----------------------------------------------------------------
; The timer ISR only raises tick_due; the work runs here with interrupts on.
; `sti; hlt` is atomic on x86 (sti's one-instruction shadow), so a tick
; arriving between the check and the hlt still wakes us; an emulator without
; the shadow would only make that tick one period late.
idle:
    cli
    cmp byte [tick_due], 0
    jne .work
    sti
    hlt
    jmp idle
.work:
    mov byte [tick_due], 0      ; a tick that outlasts its period drops the next
    sti                         ; one rather than bursting to catch up
    call tick
    jmp idle

; ---- one tick -------------------------------------------------------------------
tick:
    inc dword [counter]
    call dirty_pages
    cmp dword [use_disk], 0
    je .print
    call disk_tick
.print:
    mov esi, s_counter
    call puts
    mov eax, [counter]
    call put_dec
    mov al, 10
    call putc
    mov eax, [disk_errors]
    test eax, eax
    jz .done
    mov esi, s_disk_errors
    call puts
    mov eax, [disk_errors]
    call put_dec
    mov al, 10
    call putc
.done:
    ret

; Write the counter into `dirty` consecutive pages of the walk region,
; wrapping at its end. clamp_settings guarantees dirty <= pages in the region,
; so the pages of one tick are distinct.
dirty_pages:
    mov ecx, [dirty]
    jecxz .done
    mov edi, [walk]
    mov eax, [counter]
.next:
    mov [edi], eax
    add edi, PAGE
    cmp edi, [mem_top]
    jb .in
    mov edi, [walk_base]
.in:
    loop .next
    mov [walk], edi
.done:
    ret

; Stamp sector (counter mod 256), flush, then read back and check the sector
; of the previous tick. The first tick has nothing earlier to check.
disk_tick:
    mov eax, [counter]
    mov edi, sector
    mov ecx, 512 / 8
.fill:
    mov dword [edi], 'TNDM'
    mov [edi + 4], eax
    add edi, 8
    loop .fill

    movzx eax, byte [counter]   ; LBA = counter mod 256
    mov bl, 0x30                ; WRITE SECTORS
    call ata_command
    jc .error
    mov esi, sector
    mov ecx, 256
    mov dx, ATA
    rep outsw
    call ata_wait_idle
    jc .error
    mov al, 0xE7                ; FLUSH CACHE: the write is durable before we
    mov dx, ATA + 7             ; print the line that depends on it
    out dx, al
    call ata_wait_idle
    jc .error

    mov eax, [counter]
    dec eax
    jz .done                    ; tick 1: nothing written before
    movzx eax, al
    mov bl, 0x20                ; READ SECTORS
    call ata_command
    jc .error
    mov edi, sector
    mov ecx, 256
    mov dx, ATA
    rep insw
    mov eax, [counter]
    dec eax
    mov esi, sector
    mov ecx, 512 / 8
.check:
    cmp dword [esi], 'TNDM'
    jne .error
    cmp [esi + 4], eax
    jne .error
    add esi, 8
    loop .check
.done:
    ret
.error:
    inc dword [disk_errors]
    ret

; ---- ATA PIO (primary master, LBA28, one sector, interrupts off) ----------------

; CF set if BSY does not clear or ERR/DF are set when it does.
ata_wait_idle:
    mov dx, ATA + 7
    mov ecx, POLLS
.poll:
    in al, dx
    test al, ST_BSY
    jz .idle
    loop .poll
    stc
    ret
.idle:
    test al, ST_ERR | ST_DF
    jz .ok
    stc
    ret
.ok:
    clc
    ret

; CF set unless the drive ends up ready to move data (DRQ, no error).
ata_wait_drq:
    call ata_wait_idle
    jc .done
    test al, ST_DRQ
    jnz .done                   ; CF is clear after test
    stc
.done:
    ret

; Issue command BL for one sector at LBA EAX, wait for DRQ. CF on failure.
ata_command:
    push eax
    call ata_wait_idle
    pop eax
    jc .done
    mov ecx, eax
    mov dx, ATA + 6
    shr eax, 24
    and al, 0x0F
    or al, 0xE0                 ; master, LBA mode
    out dx, al
    mov dx, ATA + 2
    mov al, 1
    out dx, al
    inc dx
    mov al, cl                  ; LBA 0..7
    out dx, al
    inc dx
    mov al, ch                  ; LBA 8..15
    out dx, al
    inc dx
    shr ecx, 16                 ; LBA 16..23
    mov al, cl
    out dx, al
    mov dx, ATA + 7
    mov al, bl
    out dx, al
    call ata_wait_drq
.done:
    ret

; CF clear if a usable ATA disk is the primary master. A status of 0 (v86:
; no drive) or 0xFF (floating bus) means absent; so do a failed IDENTIFY
; (ATAPI aborts it) and a disk too small to hold the 256-sector ring.
ata_detect:
    mov dx, ATA_CTL
    mov al, 0x02                ; nIEN: we poll, the drive must not raise IRQ 14
    out dx, al
    mov dx, ATA + 6
    mov al, 0xA0
    out dx, al
    mov dx, ATA_CTL             ; the customary 400 ns settle after a select
    in al, dx
    in al, dx
    in al, dx
    in al, dx
    mov dx, ATA + 7
    in al, dx
    test al, al
    jz .absent
    cmp al, 0xFF
    je .absent
    call ata_wait_idle
    jc .absent
    mov dx, ATA + 2
    xor al, al
    out dx, al
    inc dx
    out dx, al
    inc dx
    out dx, al
    inc dx
    out dx, al
    mov dx, ATA + 7
    mov al, 0xEC                ; IDENTIFY DEVICE
    out dx, al
    call ata_wait_drq
    jc .absent
    mov edi, sector
    mov ecx, 256
    mov dx, ATA
    rep insw
    cmp dword [sector + 120], RING  ; words 60-61: LBA28 sector count
    jb .absent
    clc
    ret
.absent:
    stc
    ret

; ---- command line -------------------------------------------------------------
; Space-separated words; `hz=N`, `dirty=N`, `disk=N` (decimal) are understood,
; anything else (including a leading kernel name) is skipped. A key with no
; digits after `=` leaves the default.
parse_cmdline:
    test dword [mbi_flags], 1 << 2
    jz .done
    mov esi, [mbi]
    mov esi, [esi + MBI_CMDLINE]
.word:
    mov al, [esi]
    test al, al
    jz .done
    cmp al, ' '
    jne .try
    inc esi
    jmp .word
.try:
    mov edi, k_hz
    mov ebx, hz
    call match_key
    jnc .skip
    mov edi, k_dirty
    mov ebx, dirty
    call match_key
    jnc .skip
    mov edi, k_disk
    mov ebx, use_disk
    call match_key
.skip:                          ; to the end of this word
    mov al, [esi]
    test al, al
    jz .done
    cmp al, ' '
    je .word
    inc esi
    jmp .skip
.done:
    ret

; If the word at ESI starts with the NUL-terminated key at EDI, parse the
; number after it into [EBX] and return CF clear (ESI past the digits).
; Otherwise CF set, ESI unchanged.
match_key:
    push esi
.cmp:
    mov al, [edi]
    test al, al
    jz .matched
    cmp al, [esi]
    jne .no
    inc esi
    inc edi
    jmp .cmp
.no:
    pop esi
    stc
    ret
.matched:
    add esp, 4
    xor eax, eax
    xor edx, edx                ; digits seen
.digit:
    movzx ecx, byte [esi]
    sub ecx, '0'
    cmp ecx, 9
    ja .end
    inc esi
    inc edx
    cmp eax, 100000000          ; saturate: every limit is far below this
    jae .digit
    imul eax, eax, 10
    add eax, ecx
    jmp .digit
.end:
    test edx, edx
    jz .keep
    mov [ebx], eax
.keep:
    clc
    ret

; Top of the RAM block that holds the kernel: mem_upper if the loader gave it
; (info flag 0), else the memory map entry containing 1 MiB (info flag 6).
; v86 0.5.462 gives only the map. With neither, the walk region is empty.
find_mem_top:
    mov eax, bss_end + PAGE - 1
    and eax, -PAGE
    mov [walk_base], eax
    mov [walk], eax
    mov [mem_top], eax          ; empty region unless found below
    mov ebx, [mbi]
    test dword [mbi_flags], 1 << 0
    jz .map
    mov eax, [ebx + MBI_UPPER]
    cmp eax, (0xFFFFF000 - 0x100000) / 1024
    jbe .upper_ok
    mov eax, (0xFFFFF000 - 0x100000) / 1024
.upper_ok:
    shl eax, 10
    add eax, 0x100000
    jmp .set
.map:
    test dword [mbi_flags], 1 << 6
    jz .done
    mov esi, [ebx + MBI_MMADDR]
    mov ecx, [ebx + MBI_MMLEN]
    add ecx, esi                ; end of the map
.entry:
    cmp esi, ecx
    jae .done
    ; entry: size, base (u64), length (u64), type; size excludes itself
    cmp dword [esi + 20], 1     ; available RAM
    jne .next
    cmp dword [esi + 8], 0      ; base above 4 GiB
    jne .next
    mov eax, [esi + 4]
    cmp eax, 0x100000
    ja .next
    mov edx, [esi + 12]
    cmp dword [esi + 16], 0
    jne .cap
    add edx, eax
    jc .cap
    cmp edx, 0x100000
    jbe .next
    mov eax, edx
    jmp .set
.cap:
    mov eax, 0xFFFFF000
    jmp .set
.next:
    add esi, [esi]
    add esi, 4
    jmp .entry
.set:
    and eax, -PAGE
    cmp eax, [walk_base]
    jbe .done
    mov [mem_top], eax
.done:
    ret

clamp_settings:
    mov eax, [hz]
    cmp eax, 1
    jae .hz_low
    mov eax, 1
.hz_low:
    cmp eax, 1000
    jbe .hz_high
    mov eax, 1000
.hz_high:
    mov [hz], eax
    mov eax, [mem_top]          ; dirty <= pages in the walk region
    sub eax, [walk_base]
    shr eax, 12
    cmp [dirty], eax
    jbe .dirty_ok
    mov [dirty], eax
.dirty_ok:
    cmp dword [use_disk], 0
    je .disk_ok
    mov dword [use_disk], 1
.disk_ok:
    ret

; ---- serial (COM1, 115200 8N1, polled) ----------------------------------------
serial_init:
    mov dx, COM1 + 1
    xor al, al                  ; no UART interrupts
    out dx, al
    mov dx, COM1 + 3
    mov al, 0x80                ; DLAB
    out dx, al
    mov dx, COM1
    mov al, 1                   ; divisor 1
    out dx, al
    inc dx
    xor al, al
    out dx, al
    mov dx, COM1 + 3
    mov al, 0x03                ; 8N1
    out dx, al
    mov dx, COM1 + 2
    mov al, 0xC7                ; FIFO on, cleared
    out dx, al
    mov dx, COM1 + 4
    mov al, 0x03                ; DTR, RTS
    out dx, al
    ret

; AL -> COM1, after waiting (bounded) for the transmit holding register.
putc:
    push ecx
    push edx
    push eax
    mov dx, COM1 + 5
    mov ecx, 100000
.wait:
    in al, dx
    test al, 0x20
    jnz .ready
    loop .wait
.ready:
    pop eax
    mov dx, COM1
    out dx, al
    pop edx
    pop ecx
    ret

; NUL-terminated string at ESI.
puts:
    lodsb
    test al, al
    jz .done
    call putc
    jmp puts
.done:
    ret

; EAX as unsigned decimal.
put_dec:
    mov edi, decbuf_end
    mov ecx, 10
.div:
    xor edx, edx
    div ecx
    add dl, '0'
    dec edi
    mov [edi], dl
    test eax, eax
    jnz .div
    mov esi, edi
.out:
    cmp esi, decbuf_end
    je .done
    lodsb
    call putc
    jmp .out
.done:
    ret

; ---- interrupts ---------------------------------------------------------------
; Exceptions report their vector and stop: a faulting test guest should be
; loud, not limp on. IRQ 0 is the tick; everything else is masked, and any
; stray vector just returns.
idt_init:
    mov edi, idt
    xor ebx, ebx
.gate:
    mov eax, ignore_int
    cmp ebx, 32
    jae .not_exc
    lea eax, [exc_stubs + ebx * 8]
.not_exc:
    cmp ebx, 0x20
    jne .not_timer
    mov eax, timer_isr
.not_timer:
    mov [edi], ax
    mov word [edi + 2], 0x08
    mov word [edi + 4], 0x8E00  ; present, ring 0, 32-bit interrupt gate
    shr eax, 16
    mov [edi + 6], ax
    add edi, 8
    inc ebx
    cmp ebx, 256
    jb .gate
    lidt [idt_ptr]
    ret

; 8 bytes per stub so idt_init can index them.
align 8, db 0xCC
exc_stubs:
%assign v 0
%rep 32
    push byte v
    jmp exception
    align 8, db 0xCC
%assign v v + 1
%endrep

exception:
    cli
    mov esi, s_exception
    call puts
    pop eax
    call put_dec
    mov al, 10
    call putc
.stop:
    hlt
    jmp .stop

ignore_int:
    iret

; The PIT runs at hz * irqs_per_tick (at least 19 Hz, the slowest its 16-bit
; divisor allows); every irqs_per_tick-th interrupt is a tick.
timer_isr:
    push eax
    mov eax, [irq_count]
    inc eax
    cmp eax, [irqs_per_tick]
    jb .store
    xor eax, eax
    mov byte [tick_due], 1
.store:
    mov [irq_count], eax
    mov al, 0x20                ; EOI
    out 0x20, al
    pop eax
    iret

; Move IRQs 0-15 to vectors 0x20-0x2F (off the exception vectors) and mask
; everything but the timer.
pic_init:
    mov al, 0x11                ; ICW1: init, ICW4 follows
    out 0x20, al
    out 0xA0, al
    mov al, 0x20                ; ICW2: vector bases
    out 0x21, al
    mov al, 0x28
    out 0xA1, al
    mov al, 0x04                ; ICW3: slave on IRQ 2
    out 0x21, al
    mov al, 0x02
    out 0xA1, al
    mov al, 0x01                ; ICW4: 8086 mode
    out 0x21, al
    out 0xA1, al
    mov al, 0xFE                ; masks: IRQ 0 only
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al
    ret

pit_init:
    mov ecx, [hz]               ; irqs_per_tick = ceil(19 / hz)
    lea eax, [ecx + 18]
    xor edx, edx
    div ecx
    mov [irqs_per_tick], eax
    imul ecx, eax               ; PIT rate; divisor = round(PIT_HZ / rate)
    mov eax, ecx
    shr eax, 1
    add eax, PIT_HZ
    xor edx, edx
    div ecx
    mov ecx, eax
    mov al, 0x34                ; channel 0, lo/hi byte, mode 2 (rate generator)
    out 0x43, al
    mov al, cl
    out 0x40, al
    mov al, ch
    out 0x40, al
    ret

; ---- data -----------------------------------------------------------------------
; Accessed bits preset: otherwise loading a selector makes the CPU write the
; descriptor, and the image in RAM would no longer match counter.bin.
align 8
gdt:
    dq 0
    dq 0x00CF9B000000FFFF       ; 0x08: code, flat 4 GiB, 32-bit
    dq 0x00CF93000000FFFF       ; 0x10: data, flat 4 GiB
gdt_ptr:
    dw gdt_ptr - gdt - 1
    dd gdt
idt_ptr:
    dw 256 * 8 - 1
    dd idt

k_hz            db "hz=", 0
k_dirty         db "dirty=", 0
k_disk          db "disk=", 0
s_banner_hz     db "tandem guest: hz=", 0
s_banner_dirty  db " dirty=", 0
s_banner_disk   db " disk=", 0
s_no_disk       db "tandem guest: no disk", 10, 0
s_counter       db "counter ", 0
s_disk_errors   db "disk errors ", 0
s_exception     db "tandem guest: exception ", 0

align 4
image_end:

; ---- bss: not in the file; `start` clears it -----------------------------------
section .bss
alignb 4
bss_start:
mbi_flags       resd 1
mbi             resd 1
hz              resd 1
dirty           resd 1
use_disk        resd 1
counter         resd 1
disk_errors     resd 1
walk_base       resd 1          ; first page after the kernel
walk            resd 1          ; next page to dirty
mem_top         resd 1          ; end of the walk region
irqs_per_tick   resd 1
irq_count       resd 1
tick_due        resd 1
decbuf          resb 12
decbuf_end:
alignb 8
idt             resb 256 * 8
alignb 4
sector          resb 512
alignb 16
stack           resb 16384
stack_top:
bss_end:
