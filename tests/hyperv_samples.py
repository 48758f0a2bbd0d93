"""Configuration files written by Windows (cut down), shared by the unit tests of the
XML reader and the import tests. Source and provenance: docs/hyperv_xml.md."""

WINDOWS_DISK = "C:\\dev\\vagrant\\Win2k12R2\\.vagrant\\machines\\default\\hyperv\\disk.vhd"

WINDOWS_VM = """<?xml version="1.0" encoding="UTF-16" standalone="yes"?>
<configuration>
  <_83f8638b-8dca-4152-9eda-2ca8b33039b4_>
    <VDEVVersion type="integer">1280</VDEVVersion>
    <controller0>
      <drive0>
        <iops_limit type="integer">0</iops_limit>
        <pathname type="string">WINDOWS_DISK</pathname>
        <persistent_reservations_supported type="bool">False</persistent_reservations_supported>
        <type type="string">VHD</type>
        <weight type="integer">100</weight>
      </drive0>
      <drive1>
        <pathname type="string"></pathname>
        <type type="string">NONE</type>
      </drive1>
    </controller0>
    <controller1>
      <drive0>
        <pathname type="string"></pathname>
        <type type="string">ISO</type>
      </drive0>
    </controller1>
  </_83f8638b-8dca-4152-9eda-2ca8b33039b4_>
  <_d7a36e9b-9256-4f0d-be2c-3a13887f7b03_>
    <ChannelInstanceGuid type="string">{125506a8-a651-4852-87ad-3e7a29dd07fa}</ChannelInstanceGuid>
    <VDEVVersion type="integer">256</VDEVVersion>
  </_d7a36e9b-9256-4f0d-be2c-3a13887f7b03_>
  <global_settings>
    <metrics>
      <devicetype>
        <guid type="string">B637F346-6A0E-4DEC-AF52-BD70CB80A21D</guid>
      </devicetype>
      <devicetype>
        <guid type="string">83F8638B-8DCA-4152-9EDA-2CA8B33039B4</guid>
      </devicetype>
    </metrics>
    <snapshots>
      <list>
        <size type="integer">0</size>
      </list>
    </snapshots>
    <vhd_path_acled type="bool">True</vhd_path_acled>
  </global_settings>
  <manifest>
    <size type="integer">13</size>
    <vdev012>
      <device type="string">2fc216b0-d2e2-4967-9b6d-b8a5c9ca2778</device>
      <flags type="integer">1</flags>
      <instance type="string">55225880-49C0-4438-9CE2-5A01402FD8CB</instance>
      <name type="string">Synthetic Ethernet Port</name>
    </vdev012>
    <vdev013>
      <device type="string">d422512d-2bf2-4752-809d-7b82b5fcb1b4</device>
      <flags type="integer">1</flags>
      <instance type="string">D7A36E9B-9256-4F0D-BE2C-3A13887F7B03</instance>
      <name type="string">Synthetic SCSI Controller</name>
    </vdev013>
    <version type="integer">260</version>
  </manifest>
  <properties>
    <creation_time type="bytes">j3iz2977zwE=
</creation_time>
    <global_id type="string">0AA394FA-7C4A-4070-BA32-773D43B28A68</global_id>
    <highly_available type="bool">False</highly_available>
    <last_powered_on_time type="integer">130599954966442599</last_powered_on_time>
    <name type="string">2012R2</name>
    <notes type="string"></notes>
    <subtype type="integer">0</subtype>
    <type_id type="string">Virtual Machines</type_id>
    <version type="integer">1280</version>
  </properties>
  <settings>
    <global>
      <logical_id type="string">0AA394FA-7C4A-4070-BA32-773D43B28A68</logical_id>
    </global>
  </settings>
</configuration>
""".replace("WINDOWS_DISK", WINDOWS_DISK)
