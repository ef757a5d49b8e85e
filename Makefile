# Makefile for the messaging extension (PGXS)
#
# Builds one shared library, messaging.so, from the modules under src/, and
# the install script of the current version (default_version in
# messaging.control), sql/messaging--<version>.sql, from the per-subsystem
# parts under sql/install/ (concatenated in file-name order).  Every other
# sql/messaging--*.sql is committed and installed as it is: the frozen full
# scripts of released versions and the upgrade scripts
# sql/messaging--<from>--<to>.sql.

EXTENSION = messaging
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big = messaging
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))

INSTALL_PARTS = $(sort $(wildcard sql/install/*.sql))
DATA_built = sql/$(EXTENSION)--$(EXTVERSION).sql
DATA = $(filter-out $(DATA_built), $(wildcard sql/$(EXTENSION)--*.sql))

PG_CPPFLAGS = -I$(srcdir)/src -Wall -Wextra -Wno-unused-parameter \
	-Wno-missing-field-initializers -Werror=implicit-function-declaration
SHLIB_LINK = -lrabbitmq -lssl -lcrypto

# Regression tests need the library preloaded, so they run on a temporary
# instance configured by test/regress.conf (installcheck never touches an
# existing server).
REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/[0-9]*_*.sql)))
REGRESS_OPTS = --temp-instance=tmp_check --temp-config=$(srcdir)/test/regress.conf

# (make clean removes DATA_built, the generated script, itself)
EXTRA_CLEAN = tmp_check

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# A released version's script is committed as it shipped; generating it
# again (or make clean) would lose that.  Freezing a version's script and
# raising default_version belong in one commit (see README.md, "Versions
# and upgrades").
ifneq (,$(shell git -C '$(srcdir)' ls-files -- '$(DATA_built)' 2>/dev/null))
$(error $(DATA_built) is a released version's frozen script; raise default_version in $(EXTENSION).control)
endif

sql/$(EXTENSION)--$(EXTVERSION).sql: $(INSTALL_PARTS)
	cat $^ > $@
