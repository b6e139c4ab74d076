# Packaging: man pages, .deb, .rpm, and the checks of the systemd unit, the Kubernetes
# manifests and the Containerfile. Included by the GNUmakefile (VERSION, BUILD, PREFIX,
# DESTDIR, PYTHON come from there).
#
#   make man              man pages into $(BUILD)/man/ (pikod.8's options come from --help)
#   make install-package  every packaged file (packaging/files.txt) under DESTDIR/PREFIX
#   make deb              $(BUILD)/pkg/pikod_<version>_<arch>.deb (debhelper) + lintian
#   make rpm              $(BUILD)/pkg/pikod-<version>-1.<arch>.rpm + rpmlint
#   make systemd-check    systemd-analyze verify + security --offline (exposure <= 3.0)
#   make k8s-check        schema check of packaging/kubernetes/*.yaml
#   make container-check  lint of packaging/container/Containerfile
#   make man-check        groff warnings in the man pages
#   make install-test     dpkg -i the .deb, run it, dpkg -r, dpkg -P: nothing left (root)
#
# Packages are built from a staged copy of the tree in a work directory outside $(BUILD)
# (the GNUmakefile includes every *.d under $(BUILD), and a package tree has directories
# such as tmpfiles.d); the results are copied to $(BUILD)/pkg/.

PKG_DIR := $(BUILD)/pkg
PKG_WORK := $(or $(TMPDIR),/tmp)/pikod-pkg$(subst /,-,$(abspath $(BUILD)))
PKG_MAINTAINER ?= pikod developers <pikod@example.org>
PKG_SOURCES := GNUmakefile VERSION README.md common proto shm workers daemon cli docs \
               packaging systemd
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null)
DEB_FILE := $(PKG_DIR)/pikod_$(VERSION)_$(DEB_ARCH).deb
RPM_ARCH := $(shell uname -m)
RPM_FILE := $(PKG_DIR)/pikod-$(VERSION)-1.$(RPM_ARCH).rpm
# Man page dates follow the last commit (reproducible), else today.
PKG_DATE := $(shell git log -1 --format=%cs 2>/dev/null || date -u +%Y-%m-%d)
# A sub-make inside dpkg-buildpackage/rpmbuild must not inherit our command line.
PKG_CLEAN_ENV := env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES

# What `make test` runs besides the code tests (see the GNUmakefile's test target).
PACKAGING_TESTS := systemd-check k8s-check container-check man-check rpm install-test

MAN_PAGES := $(BUILD)/man/pikod.8 $(BUILD)/man/pikoctl.1 $(BUILD)/man/piko.1

.PHONY: man man-check install-package deb rpm systemd-check k8s-check \
        container-check install-test packaging-test

man: $(MAN_PAGES)

$(BUILD)/man/pikod.8: packaging/man/pikod.8.in packaging/man/help2roff.awk $(BUILD)/pikod VERSION
	@mkdir -p $(@D)
	$(BUILD)/pikod --help | awk -f packaging/man/help2roff.awk > $@.options
	sed -e 's|@VERSION@|$(VERSION)|g' -e 's|@DATE@|$(PKG_DATE)|g' \
		-e '/^@OPTIONS@$$/{r $@.options' -e 'd;}' $< > $@.tmp
	rm -f $@.options
	mv $@.tmp $@

$(BUILD)/man/%.1: packaging/man/%.1.in VERSION
	@mkdir -p $(@D)
	sed -e 's|@VERSION@|$(VERSION)|g' -e 's|@DATE@|$(PKG_DATE)|g' $< > $@

# groff prints a warning for every markup problem; any output is a failure.
man-check: $(MAN_PAGES)
	@set -e; for m in $(MAN_PAGES); do \
		out=$$(LC_ALL=C.UTF-8 MANWIDTH=80 groff -man -Tutf8 -ww -z $$m 2>&1); \
		if [ -n "$$out" ]; then echo "$$m:"; echo "$$out"; exit 1; fi; \
		echo "man-check: $$m ok"; \
	done

install-package: all man
	DESTDIR=$(DESTDIR) PREFIX=$(PREFIX) BUILD=$(BUILD) packaging/install.sh install

# pkg_stage DIR: a copy of the sources in DIR/pikod-VERSION, with debian/ at its root and
# a changelog made from VERSION.
define pkg_stage
	rm -rf $(1)
	mkdir -p $(1)/pikod-$(VERSION)
	tar -cf - $(PKG_SOURCES) | tar -xf - -C $(1)/pikod-$(VERSION)
	cp -a packaging/debian $(1)/pikod-$(VERSION)/debian
	{ echo "pikod ($(VERSION)) unstable; urgency=medium"; echo; \
	  echo "  * Release $(VERSION)."; echo; \
	  echo " -- $(PKG_MAINTAINER)  $$(git log -1 --format=%cD 2>/dev/null || date -R)"; \
	} > $(1)/pikod-$(VERSION)/debian/changelog
	sed -i 's|^Maintainer: .*|Maintainer: $(PKG_MAINTAINER)|' $(1)/pikod-$(VERSION)/debian/control
endef

deb:
	$(call pkg_stage,$(PKG_WORK)/deb)
	cd $(PKG_WORK)/deb/pikod-$(VERSION) && $(PKG_CLEAN_ENV) dpkg-buildpackage -b -us -uc -j2
	lintian --fail-on error,warning --suppress-tags-from-file packaging/debian/lintian-suppress \
		$(PKG_WORK)/deb/pikod_$(VERSION)_$(DEB_ARCH).changes
	mkdir -p $(PKG_DIR)
	rm -f $(PKG_DIR)/pikod_* $(PKG_DIR)/pikod-dbgsym_*
	cp $(PKG_WORK)/deb/pikod_$(VERSION)_* $(PKG_WORK)/deb/pikod-dbgsym_$(VERSION)_* $(PKG_DIR)/
	rm -rf $(PKG_WORK)/deb; rmdir $(PKG_WORK) 2>/dev/null || true
	@echo "deb: $(DEB_FILE)"

rpm:
	$(call pkg_stage,$(PKG_WORK)/rpm)
	mkdir -p $(PKG_WORK)/rpm/top/SOURCES
	tar -czf $(PKG_WORK)/rpm/top/SOURCES/pikod-$(VERSION).tar.gz -C $(PKG_WORK)/rpm \
		--exclude=pikod-$(VERSION)/debian pikod-$(VERSION)
	cp packaging/sysusers/pikod.conf $(PKG_WORK)/rpm/top/SOURCES/pikod.sysusers
	$(PKG_CLEAN_ENV) rpmbuild -bb $(RPMBUILD_FLAGS) \
		--define "_topdir $(PKG_WORK)/rpm/top" \
		--define "pikod_version $(VERSION)" --define "packager $(PKG_MAINTAINER)" \
		packaging/rpm/pikod.spec
	rpmlint -c packaging/rpm/rpmlint.toml -r packaging/rpm/rpmlintrc \
		$(PKG_WORK)/rpm/top/RPMS/$(RPM_ARCH)/pikod-$(VERSION)-1.$(RPM_ARCH).rpm
	mkdir -p $(PKG_DIR)
	cp $(PKG_WORK)/rpm/top/RPMS/$(RPM_ARCH)/pikod-*$(VERSION)-1.$(RPM_ARCH).rpm $(PKG_DIR)/
	rm -rf $(PKG_WORK)/rpm; rmdir $(PKG_WORK) 2>/dev/null || true
	@echo "rpm: $(RPM_FILE)"

# Debian and Ubuntu have no rpm database of build dependencies: skip that check there.
# Their rpm's brp-compress also fails (debian_host: the spec compresses and strips itself).
RPMBUILD_FLAGS := $(if $(wildcard /etc/debian_version),--nodeps --define "debian_host 1")

systemd-check: $(BUILD)/pikod
	packaging/tests/check_systemd.sh $(BUILD)/pikod

k8s-check: $(BUILD)/pikod
	$(PYTHON) packaging/kubernetes/check_manifests.py --pikod $(BUILD)/pikod packaging/kubernetes/*.yaml

container-check: $(BUILD)/pikod $(BUILD)/pikoctl $(BUILD)/piko
	@set -e; for b in pikod pikoctl piko; do \
		$(PYTHON) packaging/container/check_containerfile.py --binary $(BUILD)/$$b \
			--manifest packaging/kubernetes/pikod.yaml packaging/container/Containerfile; \
	done

install-test: deb
	$(PYTHON) packaging/tests/install_test.py $(DEB_FILE)

packaging-test: $(PACKAGING_TESTS)
