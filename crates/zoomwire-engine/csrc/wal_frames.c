/*
** A VFS over SQLite's default ("unix") that writes a commit's WAL frames
** with one write instead of two a frame.
**
** SQLite writes each WAL frame as its 24-byte header and then its page, two
** pwrite calls at adjacent offsets (walWriteOneFrame in sqlite3.c), frame
** after frame: ~26 frames a commit in the durable journal's burst. Each
** call costs the kernel ~2 us beyond copying its bytes (on this project's
** machine, 26 frames of 4 KiB and an fdatasync took 102-108 us of system
** time written a frame a call, 49-58 us written in one call). Here the
** writes to a WAL file that follow on from each other are gathered in a
** buffer and sent as one write when the commit frame's page is in (a frame
** header whose "database size after commit" field is not zero), when the
** buffer would pass GATHER_MAX, or before any other call on the file (a
** sync, a read, a truncate, a lock, close, a write elsewhere). So what
** SQLite syncs is what it wrote, and a commit's frames are all in the file
** before SQLite publishes them to readers: it publishes frames only at a
** commit (the wal-index header's mxFrame), and with synchronous=NORMAL
** without a sync first (the index is the main database file's shared
** memory, so no call on the log comes between). A failed write is reported
** by the call that sends it.
**
** Every other file (the database, its shared-memory index) and every other
** VFS method goes to "unix" unchanged. Registered by
** zoomwire_register_wal_frames(), and named by the journal's writer when it
** opens its connection (src/journal/vfs.rs); other connections use "unix".
*/
#include <stdlib.h>
#include <string.h>
#include "sqlite3.h"

#define FRAME_HEADER 24
/* At most this much is gathered (31 frames of 4 KiB pages): the unix VFS
** writes at most 0x1ffff bytes a call (seekAndWriteFd masks the count with
** it, so a larger write comes back short and is taken for a full disk). */
#define GATHER_MAX 0x1ffff

typedef struct FrameFile {
  sqlite3_file base;        /* pMethods: frame_methods */
  sqlite3_file *real;       /* the unix file, just after this struct */
  unsigned char *gathered;  /* writes not sent yet, contiguous */
  int gathered_size;        /* bytes in it */
  int capacity;             /* bytes allocated */
  sqlite3_int64 gathered_at; /* the file offset of its first byte */
  int commit_next;          /* the last write was a commit frame's header:
                               its page ends the commit */
} FrameFile;

static sqlite3_vfs *unix_vfs;

/* Frame headers gathered, and writes sent, by this thread (for the tests,
** which write on their own thread while others write elsewhere). */
static _Thread_local long frames_gathered;
static _Thread_local long writes_sent;

long zoomwire_wal_frames_gathered(void) { return frames_gathered; }

long zoomwire_wal_writes_sent(void) { return writes_sent; }

#define REAL(f) (((FrameFile *)(f))->real)

/* Writes what is gathered, as one write. */
static int send_gathered(FrameFile *f) {
  if (f->gathered_size == 0) return SQLITE_OK;
  int size = f->gathered_size;
  f->gathered_size = 0;
  writes_sent++;
  return f->real->pMethods->xWrite(f->real, f->gathered, size, f->gathered_at);
}

/* Whether the buffer has room for `size` bytes, growing it if need be. */
static int reserve(FrameFile *f, int size) {
  if (size <= f->capacity) return 1;
  if (size > GATHER_MAX) return 0;
  int capacity = f->capacity ? f->capacity : 64 * 1024;
  while (capacity < size) capacity *= 2;
  if (capacity > GATHER_MAX) capacity = GATHER_MAX;
  unsigned char *grown = realloc(f->gathered, (size_t)capacity);
  if (!grown) return 0;
  f->gathered = grown;
  f->capacity = capacity;
  return 1;
}

/* A frame header's "database size after commit": not zero on a commit frame. */
static int is_commit_header(const unsigned char *header) {
  return header[4] | header[5] | header[6] | header[7];
}

static int frame_close(sqlite3_file *file) {
  FrameFile *f = (FrameFile *)file;
  int sent = send_gathered(f);
  int rc = f->real->pMethods->xClose(f->real);
  free(f->gathered);
  f->gathered = 0;
  return sent != SQLITE_OK ? sent : rc;
}

static int frame_read(sqlite3_file *file, void *buf, int amount, sqlite3_int64 offset) {
  int rc = send_gathered((FrameFile *)file);
  if (rc != SQLITE_OK) return rc;
  return REAL(file)->pMethods->xRead(REAL(file), buf, amount, offset);
}

static int frame_write(sqlite3_file *file, const void *buf, int amount, sqlite3_int64 offset) {
  FrameFile *f = (FrameFile *)file;
  int follows = offset == f->gathered_at + f->gathered_size;
  if (f->gathered_size > 0 && (!follows || f->gathered_size + amount > GATHER_MAX)) {
    int rc = send_gathered(f);
    if (rc != SQLITE_OK) return rc;
  }
  if (!reserve(f, f->gathered_size + amount)) {
    int rc = send_gathered(f);
    if (rc != SQLITE_OK) return rc;
    return f->real->pMethods->xWrite(f->real, buf, amount, offset);
  }
  if (f->gathered_size == 0) f->gathered_at = offset;
  memcpy(f->gathered + f->gathered_size, buf, (size_t)amount);
  f->gathered_size += amount;
  if (amount == FRAME_HEADER) {
    frames_gathered++;
    f->commit_next = is_commit_header(buf);
    return SQLITE_OK;
  }
  /* The commit frame's page: the commit's frames go to the file now (even
  ** when its header went out with an earlier, full buffer). */
  if (!f->commit_next) return SQLITE_OK;
  f->commit_next = 0;
  return send_gathered(f);
}

static int frame_truncate(sqlite3_file *file, sqlite3_int64 size) {
  int rc = send_gathered((FrameFile *)file);
  if (rc != SQLITE_OK) return rc;
  return REAL(file)->pMethods->xTruncate(REAL(file), size);
}

static int frame_sync(sqlite3_file *file, int flags) {
  int rc = send_gathered((FrameFile *)file);
  if (rc != SQLITE_OK) return rc;
  return REAL(file)->pMethods->xSync(REAL(file), flags);
}

static int frame_file_size(sqlite3_file *file, sqlite3_int64 *size) {
  int rc = send_gathered((FrameFile *)file);
  if (rc != SQLITE_OK) return rc;
  return REAL(file)->pMethods->xFileSize(REAL(file), size);
}

static int frame_lock(sqlite3_file *file, int level) {
  int rc = send_gathered((FrameFile *)file);
  if (rc != SQLITE_OK) return rc;
  return REAL(file)->pMethods->xLock(REAL(file), level);
}

static int frame_unlock(sqlite3_file *file, int level) {
  int rc = send_gathered((FrameFile *)file);
  if (rc != SQLITE_OK) return rc;
  return REAL(file)->pMethods->xUnlock(REAL(file), level);
}

static int frame_check_reserved_lock(sqlite3_file *file, int *out) {
  return REAL(file)->pMethods->xCheckReservedLock(REAL(file), out);
}

static int frame_file_control(sqlite3_file *file, int op, void *arg) {
  int rc = send_gathered((FrameFile *)file);
  if (rc != SQLITE_OK) return rc;
  return REAL(file)->pMethods->xFileControl(REAL(file), op, arg);
}

static int frame_sector_size(sqlite3_file *file) {
  return REAL(file)->pMethods->xSectorSize(REAL(file));
}

static int frame_device_characteristics(sqlite3_file *file) {
  return REAL(file)->pMethods->xDeviceCharacteristics(REAL(file));
}

static int frame_shm_map(sqlite3_file *file, int page, int size, int extend, void volatile **out) {
  return REAL(file)->pMethods->xShmMap(REAL(file), page, size, extend, out);
}

static int frame_shm_lock(sqlite3_file *file, int offset, int n, int flags) {
  return REAL(file)->pMethods->xShmLock(REAL(file), offset, n, flags);
}

static void frame_shm_barrier(sqlite3_file *file) {
  REAL(file)->pMethods->xShmBarrier(REAL(file));
}

static int frame_shm_unmap(sqlite3_file *file, int delete_flag) {
  return REAL(file)->pMethods->xShmUnmap(REAL(file), delete_flag);
}

static int frame_fetch(sqlite3_file *file, sqlite3_int64 offset, int amount, void **out) {
  int rc = send_gathered((FrameFile *)file);
  if (rc != SQLITE_OK) return rc;
  return REAL(file)->pMethods->xFetch(REAL(file), offset, amount, out);
}

static int frame_unfetch(sqlite3_file *file, sqlite3_int64 offset, void *page) {
  return REAL(file)->pMethods->xUnfetch(REAL(file), offset, page);
}

/* Version 3, as unix's: every method the real file has. */
static const sqlite3_io_methods frame_methods = {
  3,
  frame_close,
  frame_read,
  frame_write,
  frame_truncate,
  frame_sync,
  frame_file_size,
  frame_lock,
  frame_unlock,
  frame_check_reserved_lock,
  frame_file_control,
  frame_sector_size,
  frame_device_characteristics,
  frame_shm_map,
  frame_shm_lock,
  frame_shm_barrier,
  frame_shm_unmap,
  frame_fetch,
  frame_unfetch,
};

static int frame_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *file, int flags, int *out_flags) {
  (void)vfs;
  if (!(flags & SQLITE_OPEN_WAL)) {
    /* Not a log: the unix file itself, in the same memory. */
    return unix_vfs->xOpen(unix_vfs, name, file, flags, out_flags);
  }
  FrameFile *f = (FrameFile *)file;
  memset(f, 0, sizeof(FrameFile));
  f->real = (sqlite3_file *)&f[1];
  int rc = unix_vfs->xOpen(unix_vfs, name, f->real, flags, out_flags);
  if (rc != SQLITE_OK) {
    /* base.pMethods stays 0, so SQLite closes nothing: close what unix left open. */
    if (f->real->pMethods) f->real->pMethods->xClose(f->real);
    return rc;
  }
  if (f->real->pMethods == 0 || f->real->pMethods->iVersion < 3) {
    /* Not the unix methods this was written for: use the file as it is. */
    sqlite3_file *real = f->real;
    real->pMethods->xClose(real);
    return unix_vfs->xOpen(unix_vfs, name, file, flags, out_flags);
  }
  f->base.pMethods = &frame_methods;
  return SQLITE_OK;
}

static int frame_delete(sqlite3_vfs *v, const char *name, int sync_dir) {
  (void)v;
  return unix_vfs->xDelete(unix_vfs, name, sync_dir);
}
static int frame_access(sqlite3_vfs *v, const char *name, int flags, int *out) {
  (void)v;
  return unix_vfs->xAccess(unix_vfs, name, flags, out);
}
static int frame_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out) {
  (void)v;
  return unix_vfs->xFullPathname(unix_vfs, name, n, out);
}
static void *frame_dl_open(sqlite3_vfs *v, const char *name) {
  (void)v;
  return unix_vfs->xDlOpen(unix_vfs, name);
}
static void frame_dl_error(sqlite3_vfs *v, int n, char *out) {
  (void)v;
  unix_vfs->xDlError(unix_vfs, n, out);
}
static void (*frame_dl_sym(sqlite3_vfs *v, void *lib, const char *sym))(void) {
  (void)v;
  return unix_vfs->xDlSym(unix_vfs, lib, sym);
}
static void frame_dl_close(sqlite3_vfs *v, void *lib) {
  (void)v;
  unix_vfs->xDlClose(unix_vfs, lib);
}
static int frame_randomness(sqlite3_vfs *v, int n, char *out) {
  (void)v;
  return unix_vfs->xRandomness(unix_vfs, n, out);
}
static int frame_sleep(sqlite3_vfs *v, int micros) {
  (void)v;
  return unix_vfs->xSleep(unix_vfs, micros);
}
static int frame_current_time(sqlite3_vfs *v, double *out) {
  (void)v;
  return unix_vfs->xCurrentTime(unix_vfs, out);
}
static int frame_get_last_error(sqlite3_vfs *v, int n, char *out) {
  (void)v;
  return unix_vfs->xGetLastError(unix_vfs, n, out);
}
static int frame_current_time_int64(sqlite3_vfs *v, sqlite3_int64 *out) {
  (void)v;
  return unix_vfs->xCurrentTimeInt64(unix_vfs, out);
}
static int frame_set_system_call(sqlite3_vfs *v, const char *name, sqlite3_syscall_ptr call) {
  (void)v;
  return unix_vfs->xSetSystemCall(unix_vfs, name, call);
}
static sqlite3_syscall_ptr frame_get_system_call(sqlite3_vfs *v, const char *name) {
  (void)v;
  return unix_vfs->xGetSystemCall(unix_vfs, name);
}
static const char *frame_next_system_call(sqlite3_vfs *v, const char *name) {
  (void)v;
  return unix_vfs->xNextSystemCall(unix_vfs, name);
}

static sqlite3_vfs frame_vfs = {
  3, 0, 0, 0, "zoomwire-wal-frames", 0,
  frame_open, frame_delete, frame_access, frame_full_pathname,
  frame_dl_open, frame_dl_error, frame_dl_sym, frame_dl_close,
  frame_randomness, frame_sleep, frame_current_time, frame_get_last_error,
  frame_current_time_int64,
  frame_set_system_call, frame_get_system_call, frame_next_system_call,
};

/* Registers the VFS, not as the default. SQLITE_OK, or SQLite's error;
** SQLITE_NOTFOUND without a "unix" VFS of version 3 (nothing is registered).
** Called once (src/journal/vfs.rs). */
int zoomwire_register_wal_frames(void) {
  int rc = sqlite3_initialize();
  if (rc != SQLITE_OK) return rc;
  if (unix_vfs) return SQLITE_OK;
  sqlite3_vfs *real = sqlite3_vfs_find("unix");
  if (!real || real->iVersion < 3) return SQLITE_NOTFOUND;
  frame_vfs.szOsFile = (int)sizeof(FrameFile) + real->szOsFile;
  frame_vfs.mxPathname = real->mxPathname;
  unix_vfs = real;
  return sqlite3_vfs_register(&frame_vfs, 0);
}
