/*
 * The declarations perproc-wdk and its driver crates use, transcribed from
 * Microsoft's documentation (learn.microsoft.com, "windows-hardware/drivers/ddi"
 * pages cited beside each item). bindgen turns this header into the stand-in
 * wdk-sys's generated files (see ../regenerate.sh); it is NOT the WDK and is
 * never used by a real Windows build.
 *
 * Only what the docs state is transcribed. Where the docs do not say how an
 * item is declared on an architecture (ARM64's IRQL routines), the choice is
 * marked UNCONFIRMED and listed in driver-shim/README.md.
 */
#ifndef PERPROC_WDK_STANDIN_H
#define PERPROC_WDK_STANDIN_H

/* ---- Basic types (windows-hardware/drivers/kernel/data-types; winnt.h, ntdef.h) ---- */
typedef void VOID;
typedef void *PVOID;
typedef char CHAR;
typedef const CHAR *PCSTR;
typedef unsigned char UCHAR;
typedef short CSHORT;
typedef unsigned short USHORT;
typedef USHORT *PUSHORT;
typedef unsigned short WCHAR;
typedef WCHAR *PWCH;
typedef long LONG;
typedef unsigned long ULONG;
typedef unsigned __int64 ULONG64;
typedef unsigned __int64 ULONG_PTR;
typedef ULONG_PTR SIZE_T;
typedef ULONG_PTR KAFFINITY;
typedef LONG NTSTATUS;
typedef NTSTATUS *PNTSTATUS;
typedef UCHAR KIRQL;
typedef KIRQL *PKIRQL;

/* IRQLs (windows-hardware/drivers/kernel/managing-hardware-priorities) */
#define PASSIVE_LEVEL 0
#define APC_LEVEL 1
#define DISPATCH_LEVEL 2
#define HIGH_LEVEL 15

/* UNICODE_STRING (ns-ntdef-_unicode_string) */
typedef struct _UNICODE_STRING {
    USHORT Length;
    USHORT MaximumLength;
    PWCH Buffer;
} UNICODE_STRING, *PUNICODE_STRING;
typedef const UNICODE_STRING *PCUNICODE_STRING;

/* ---- Processors and groups ---- */

/* PROCESSOR_NUMBER (ns-miniport-_processor_number) */
typedef struct _PROCESSOR_NUMBER {
    USHORT Group;
    UCHAR Number;
    UCHAR Reserved;
} PROCESSOR_NUMBER, *PPROCESSOR_NUMBER;

/* GROUP_AFFINITY (ns-miniport-_group_affinity) */
typedef struct _GROUP_AFFINITY {
    KAFFINITY Mask;
    USHORT Group;
    USHORT Reserved[3];
} GROUP_AFFINITY, *PGROUP_AFFINITY;

#define ALL_PROCESSOR_GROUPS 0xffff
#define INVALID_PROCESSOR_INDEX 0xffffffff

/* nf-wdm-kegetcurrentprocessornumberex */
ULONG KeGetCurrentProcessorNumberEx(PPROCESSOR_NUMBER ProcNumber);
/* nf-wdm-kequerymaximumprocessorcountex */
ULONG KeQueryMaximumProcessorCountEx(USHORT GroupNumber);
/* nf-wdm-kequeryactiveprocessorcountex */
ULONG KeQueryActiveProcessorCountEx(USHORT GroupNumber);
/* nf-wdm-kegetprocessorindexfromnumber */
ULONG KeGetProcessorIndexFromNumber(PPROCESSOR_NUMBER ProcNumber);
/* nf-wdm-kegetprocessornumberfromindex */
NTSTATUS KeGetProcessorNumberFromIndex(ULONG ProcIndex, PPROCESSOR_NUMBER ProcNumber);

/* ---- NUMA nodes ---- */
/* nf-wdm-kequeryhighestnodenumber */
USHORT KeQueryHighestNodeNumber(VOID);
/* nf-wdm-kequerynodeactiveaffinity */
VOID KeQueryNodeActiveAffinity(USHORT NodeNumber, PGROUP_AFFINITY Affinity, PUSHORT Count);

/* ---- Processor hot-add (nf-wdm-keregisterprocessorchangecallback,
 *      ns-wdm-_ke_processor_change_notify_context) ---- */
typedef enum {
    KeProcessorAddStartNotify = 0,
    KeProcessorAddCompleteNotify,
    KeProcessorAddFailureNotify
} KE_PROCESSOR_CHANGE_NOTIFY_STATE;

typedef struct _KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT {
    KE_PROCESSOR_CHANGE_NOTIFY_STATE State;
    ULONG NtNumber;
    NTSTATUS Status;
    PROCESSOR_NUMBER ProcNumber;
} KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, *PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT;

typedef VOID PROCESSOR_CALLBACK_FUNCTION(PVOID CallbackContext,
                                         PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT ChangeContext,
                                         PNTSTATUS OperationStatus);
typedef PROCESSOR_CALLBACK_FUNCTION *PPROCESSOR_CALLBACK_FUNCTION;

#define KE_PROCESSOR_CHANGE_ADD_EXISTING 1

PVOID KeRegisterProcessorChangeCallback(PPROCESSOR_CALLBACK_FUNCTION CallbackFunction,
                                        PVOID CallbackContext, ULONG Flags);
VOID KeDeregisterProcessorChangeCallback(PVOID CallbackHandle);

/* ---- IRQL ----
 * nf-wdm-kegetcurrentirql, nf-wdm-keraiseirql (a macro over KfRaiseIrql),
 * nf-wdm-kelowerirql. x64: exported by ntoskrnl on Windows 10 and later
 * (MicrosoftDocs/windows-driver-docs-ddi issue 1374 for KeGetCurrentIrql).
 * ARM64: KeLowerIrql is a macro over KfLowerIrql (microsoft/usersim issue 214:
 * "When building against arm64 ... KfLowerIrql is not inlined and is instead
 * expected to be a function"). UNCONFIRMED for ARM64: that KeGetCurrentIrql and
 * KfRaiseIrql are plain exports there too. */
KIRQL KeGetCurrentIrql(VOID);
KIRQL KfRaiseIrql(KIRQL NewIrql);
#if defined(_ARM64_)
VOID KfLowerIrql(KIRQL NewIrql);
#define KeLowerIrql(a) KfLowerIrql(a)
#else
VOID KeLowerIrql(KIRQL NewIrql);
#endif

/* ---- Pool (nf-wdm-exallocatepool2, nf-wdm-exallocatepool3,
 *      ns-wdm-pool_extended_parameter, ne-wdm-pool_extended_parameter_type,
 *      nf-wdm-exfreepool, nf-wdm-exfreepoolwithtag) ----
 * POOL_FLAGS values carry MSVC integer suffixes that bindgen cannot parse;
 * wdk-sys hand-writes them, and so does the stand-in (src/lib.rs). */
typedef ULONG64 POOL_FLAGS;

typedef enum _EX_POOL_PRIORITY {
    LowPoolPriority,
    LowPoolPrioritySpecialPoolOverrun = 8,
    LowPoolPrioritySpecialPoolUnderrun = 9,
    NormalPoolPriority = 16,
    NormalPoolPrioritySpecialPoolOverrun = 24,
    NormalPoolPrioritySpecialPoolUnderrun = 25,
    HighPoolPriority = 32,
    HighPoolPrioritySpecialPoolOverrun = 40,
    HighPoolPrioritySpecialPoolUnderrun = 41
} EX_POOL_PRIORITY;

typedef enum POOL_EXTENDED_PARAMETER_TYPE {
    PoolExtendedParameterInvalidType = 0,
    PoolExtendedParameterPriority,
    PoolExtendedParameterSecurePool,
    PoolExtendedParameterNumaNode,
    PoolExtendedParameterMax
} POOL_EXTENDED_PARAMETER_TYPE, *PPOOL_EXTENDED_PARAMETER_TYPE;

#define POOL_EXTENDED_PARAMETER_TYPE_BITS 8
#define POOL_EXTENDED_PARAMETER_REQUIRED_FIELD_BITS 1
#define POOL_EXTENDED_PARAMETER_RESERVED_BITS (64 - POOL_EXTENDED_PARAMETER_TYPE_BITS - POOL_EXTENDED_PARAMETER_REQUIRED_FIELD_BITS)

typedef ULONG POOL_NODE_REQUIREMENT;
#define MM_ANY_NODE_OK 0x80000000

struct _POOL_EXTENDED_PARAMS_SECURE_POOL;

typedef struct _POOL_EXTENDED_PARAMETER {
    struct {
        ULONG64 Type : POOL_EXTENDED_PARAMETER_TYPE_BITS;
        ULONG64 Optional : POOL_EXTENDED_PARAMETER_REQUIRED_FIELD_BITS;
        ULONG64 Reserved : POOL_EXTENDED_PARAMETER_RESERVED_BITS;
    };
    union {
        ULONG64 Reserved2;
        PVOID Reserved3;
        EX_POOL_PRIORITY Priority;
        struct _POOL_EXTENDED_PARAMS_SECURE_POOL *SecurePoolParams;
        POOL_NODE_REQUIREMENT PreferredNode;
    };
} POOL_EXTENDED_PARAMETER, *PPOOL_EXTENDED_PARAMETER;
typedef const POOL_EXTENDED_PARAMETER *PCPOOL_EXTENDED_PARAMETER;

PVOID ExAllocatePool2(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);
PVOID ExAllocatePool3(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag,
                      PCPOOL_EXTENDED_PARAMETER ExtendedParameters,
                      ULONG ExtendedParametersCount);
VOID ExFreePool(PVOID P);
VOID ExFreePoolWithTag(PVOID P, ULONG Tag);

/* ---- Driver object (ns-wdm-_driver_object, nc-wdm-driver_unload,
 *      nc-wdm-driver_dispatch, nc-wdm-driver_initialize) ----
 * The structures a DRIVER_OBJECT only points to are left incomplete: the
 * shim never looks inside them. */
struct _DEVICE_OBJECT;
struct _DRIVER_EXTENSION;
struct _FAST_IO_DISPATCH;
struct _IRP;
struct _DRIVER_OBJECT;

typedef NTSTATUS DRIVER_INITIALIZE(struct _DRIVER_OBJECT *DriverObject, PUNICODE_STRING RegistryPath);
typedef DRIVER_INITIALIZE *PDRIVER_INITIALIZE;
typedef VOID DRIVER_STARTIO(struct _DEVICE_OBJECT *DeviceObject, struct _IRP *Irp);
typedef DRIVER_STARTIO *PDRIVER_STARTIO;
typedef VOID DRIVER_UNLOAD(struct _DRIVER_OBJECT *DriverObject);
typedef DRIVER_UNLOAD *PDRIVER_UNLOAD;
typedef NTSTATUS DRIVER_DISPATCH(struct _DEVICE_OBJECT *DeviceObject, struct _IRP *Irp);
typedef DRIVER_DISPATCH *PDRIVER_DISPATCH;

#define IRP_MJ_MAXIMUM_FUNCTION 0x1b

typedef struct _DRIVER_OBJECT {
    CSHORT Type;
    CSHORT Size;
    struct _DEVICE_OBJECT *DeviceObject;
    ULONG Flags;
    PVOID DriverStart;
    ULONG DriverSize;
    PVOID DriverSection;
    struct _DRIVER_EXTENSION *DriverExtension;
    UNICODE_STRING DriverName;
    PUNICODE_STRING HardwareDatabase;
    struct _FAST_IO_DISPATCH *FastIoDispatch;
    PDRIVER_INITIALIZE DriverInit;
    PDRIVER_STARTIO DriverStartIo;
    PDRIVER_UNLOAD DriverUnload;
    PDRIVER_DISPATCH MajorFunction[IRP_MJ_MAXIMUM_FUNCTION + 1];
} DRIVER_OBJECT, *PDRIVER_OBJECT;

/* ---- Debug output, used by the `wdk` crate's print! (nf-wdm-dbgprint) ---- */
ULONG __cdecl DbgPrint(PCSTR Format, ...);

#endif
