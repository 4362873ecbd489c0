<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<!-- changedet: new structures, one colour per first-seen date (field first_seen_end).
     Unconfirmed structures (confirmed = false) get a dashed outline.
     changedet writes a copy of this style per run with one category per first-seen date;
     the single category below is the fallback for structures whose first-seen date is unknown. -->
<qgis version="3.22.16-Białowieża" styleCategories="Symbology|Labeling|MapTips">
  <renderer-v2 type="categorizedSymbol" attr="first_seen_end" forceraster="0" symbollevels="0" enableorderby="0" referencescale="-1">
    <categories>
      <category render="true" symbol="0" value="" label="first-seen date unknown" type="string"/>
    </categories>
    <symbols>
      <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
        <data_defined_properties>
          <Option type="Map">
            <Option name="name" type="QString" value=""/>
            <Option name="properties"/>
            <Option name="type" type="QString" value="collection"/>
          </Option>
        </data_defined_properties>
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="border_width_map_unit_scale" v="3x:0,0,0,0,0,0"/>
          <prop k="color" v="150,150,150,70"/>
          <prop k="joinstyle" v="miter"/>
          <prop k="offset" v="0,0"/>
          <prop k="offset_map_unit_scale" v="3x:0,0,0,0,0,0"/>
          <prop k="offset_unit" v="MM"/>
          <prop k="outline_color" v="150,150,150,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.7"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="solid"/>
          <data_defined_properties>
            <Option type="Map">
              <Option name="name" type="QString" value=""/>
              <Option name="properties" type="Map">
                <Option name="outlineStyle" type="Map">
                  <Option name="active" type="bool" value="true"/>
                  <Option name="expression" type="QString" value="CASE WHEN &quot;confirmed&quot; THEN 'solid' ELSE 'dash' END"/>
                  <Option name="type" type="int" value="3"/>
                </Option>
              </Option>
              <Option name="type" type="QString" value="collection"/>
            </Option>
          </data_defined_properties>
        </layer>
      </symbol>
    </symbols>
    <rotation/>
    <sizescale/>
  </renderer-v2>
  <mapTip>[% "id" %]: first seen [% "first_seen_start" %] to [% "first_seen_end" %], [% round("area_m2") %] m², confidence [% "confidence" %][% CASE WHEN "confirmed" THEN '' ELSE ' (unconfirmed)' END %]</mapTip>
  <previewExpression>"id"</previewExpression>
  <layerGeometryType>2</layerGeometryType>
</qgis>
